"""Checkpoints: unreadable ones moved aside, wall-clock cadence, bounded host memory on resume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import metrics_rows, train_rows

import qat_sweep.train.checkpoint as checkpoint
import qat_sweep.train.trainer as trainer
from qat_sweep.config.compose import compose_run, run_dir
from qat_sweep.record import CORRUPT_DIR, METRICS_NAME, RECORD_NAME, read_record
from qat_sweep.train.checkpoint import TRAIN_STATE, complete_checkpoints
from qat_sweep.train.preemption import Preempted
from qat_sweep.train.trainer import train

TINY = [
    "model=0.2M",
    "tokens=40960",  # 20 steps
    "logger=none",
    "eval.batches=2",
    "eval.batch_seqs=8",
    "train.threads=1",
    "checkpoint.every_steps=4",
    "checkpoint.keep_on_success=true",
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, demo_data: Path) -> tuple[list, dict]:
    """A completed run that kept its two newest checkpoints (steps 12 and 16)."""
    args = [*TINY, f"data.dir={demo_data}"]
    root = tmp_path_factory.mktemp("ref")
    record = train(compose_run([*args, f"paths.runs={root}"]))
    assert record["status"] == "completed", record["error"]
    return args, record, run_dir(compose_run([*args, f"paths.runs={root}"]))


def copy_of(finished: tuple, tmp_path: Path) -> tuple[list, Path, list[Path]]:
    """The finished run's directory copied, without its record: args, directory, checkpoints."""
    args, _, source = finished
    args = [*args, f"paths.runs={tmp_path}"]
    target = run_dir(compose_run(args))
    shutil.copytree(source, target)
    (target / RECORD_NAME).unlink()  # as if the job died after its last checkpoint
    return args, target, complete_checkpoints(target)


@pytest.mark.slow
def test_truncated_checkpoint_is_moved_aside_and_the_previous_one_resumes(
    finished: tuple, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args, target, (newest, previous) = copy_of(finished, tmp_path)
    assert [newest.name, previous.name] == ["step-000000016", "step-000000012"]
    (shard,) = newest.glob("*.distcp")
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a torn copy
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert record["loss"] == pytest.approx(finished[1]["loss"], abs=1e-6)  # resumed exactly
    (aside,) = record["metrics"]["corrupt_checkpoints"]
    assert Path(aside).parent == target / CORRUPT_DIR and Path(aside).is_dir()  # kept
    err = capfd.readouterr()
    assert f"checkpoint {newest} cannot be read" in err.err and aside in err.err
    assert f"resuming {target.name} at step 12" in err.out


@pytest.mark.slow
def test_empty_checkpoint_files_fall_back_to_a_fresh_start(
    finished: tuple, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    args, _, (newest, previous) = copy_of(finished, tmp_path)
    (newest / ".metadata").write_bytes(b"")
    (previous / TRAIN_STATE).write_bytes(b"")
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert len(record["metrics"]["corrupt_checkpoints"]) == 2
    assert "training from scratch" in capfd.readouterr().err
    assert record["loss"] == pytest.approx(finished[1]["loss"], abs=1e-6)


@pytest.mark.slow
def test_wall_clock_saves_keep_the_newest_complete_checkpoints(
    tmp_path: Path, demo_data: Path
) -> None:
    args = [
        *TINY, "tokens=12288", "checkpoint.every_steps=0", "checkpoint.every_minutes=1e-6",
        "checkpoint.keep=3", f"data.dir={demo_data}", f"paths.runs={tmp_path}",
    ]  # fmt: skip
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    saved = complete_checkpoints(run_dir(compose_run(args)))
    # Every step was due (6 steps); only the three newest remain, none half-written.
    assert [p.name for p in saved] == [f"step-00000000{s}" for s in (6, 5, 4)]
    assert not list((run_dir(compose_run(args)) / "checkpoint").glob("*.tmp"))


RESUME_RSS = """
import sys, torch
from pathlib import Path
from torch.distributed.checkpoint.state_dict import get_state_dict
from qat_sweep.train.checkpoint import load_latest, save_checkpoint
from qat_sweep.train.distributed import DistInfo
from qat_sweep.model.transformer import build_model
from qat_sweep.model.presets import load_preset

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key))
    return int(line.split()[1]) * 1024

run, info = Path(sys.argv[1]), DistInfo(0, 1, 0)
torch.manual_seed(0)
model = build_model(load_preset("5M"), None, 4096)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
if sys.argv[2] == "save":
    x = torch.randint(0, 4096, (1, 64))
    model(x, x).backward()
    optimizer.step()
    save_checkpoint(run, 1, model, optimizer, {"step": 1}, info)
else:
    get_state_dict(model, optimizer)  # the optimizer state a resuming run builds
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    before = status("VmRSS")
    state, _ = load_latest(run, model, optimizer, info)
    assert state["step"] == 1
    print(status("VmHWM") - before)
print(float(sum(p.double().sum() for p in model.parameters())))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_resume_holds_no_second_copy_of_the_state_in_host_memory(tmp_path: Path) -> None:
    def run(mode: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", RESUME_RSS, str(tmp_path), mode],
            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.split()

    (saved_sum,) = run("save")
    peak_growth, loaded_sum = run("load")
    assert loaded_sum == saved_sum  # the stepped weights came back
    size = sum(f.stat().st_size for f in complete_checkpoints(tmp_path)[0].iterdir())
    assert size > 80e6  # 7.9M parameters with AdamW states
    # Bound: one layer's worth (a block's weights with their AdamW states, ~25 MB) plus slack,
    # where loading the whole file first (torch.load) would add its full ~94 MB.
    assert int(peak_growth) < 32e6, f"peak RSS grew {int(peak_growth) / 1e6:.1f} MB on resume"


@pytest.mark.slow
def test_every_step_a_checkpoint_covers_is_logged_before_it_is_saved(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed right after a save resumes after the saved step and never logs the steps
    before it again: by then their rows (eval steps included) must be in metrics.jsonl."""
    logged_at_save: dict[int, list[int]] = {}

    def save_and_look(out_dir: Path, step: int, *args: object, **kwargs: object) -> None:
        save_checkpoint(out_dir, step, *args, **kwargs)
        logged_at_save[step] = [r["step"] for r in train_rows(out_dir)]

    save_checkpoint = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", save_and_look)
    args = [*TINY, f"data.dir={demo_data}", f"paths.runs={tmp_path}", "eval.every_steps=8"]
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert sorted(logged_at_save) == [4, 8, 12, 16]
    for step, logged in logged_at_save.items():
        assert logged == list(range(1, step + 1)), (step, logged)
    val_steps = [r["step"] for r in metrics_rows(run_dir(compose_run(args))) if "val_loss" in r]
    assert val_steps == [8, 16, 20]  # each evaluation its own row, the final one included


class Killed(BaseException):
    """A kill -9 at a chosen line: no handler of the trainer's sees it (no record is written)."""


def _signal_at(step: int) -> Callable[[trainer.Trainer], None]:
    """Trainer.train_step, with SIGUSR1 (SLURM's time-limit warning) raised after `step`."""
    train_step = trainer.Trainer.train_step

    def step_and_signal(self: trainer.Trainer) -> None:
        train_step(self)
        if self.state.step == step:
            signal.raise_signal(signal.SIGUSR1)

    return step_and_signal


def _kill_after_save_at(step: int) -> Callable[..., None]:
    save_checkpoint = trainer.save_checkpoint

    def save_then_die(out_dir: Path, at: int, *args: object, **kwargs: object) -> None:
        save_checkpoint(out_dir, at, *args, **kwargs)
        if at == step:
            raise Killed

    return save_then_die


def _kill_before_the_record(path: Path, record: object) -> None:
    raise Killed


@pytest.mark.slow
@pytest.mark.parametrize(
    "tries",
    [
        [("save_checkpoint", _kill_after_save_at(8))],  # the evaluation at 8 follows the save
        [("Trainer.train_step", _signal_at(8))],  # a stop at an eval step: save, then exit
        # A stop at the last step leaves a checkpoint there; the final eval row is logged, then
        # the job dies before the record. The next try trains no step: its record must still be
        # writable, and the final row logged once.
        [("Trainer.train_step", _signal_at(20)), ("write_json_atomic", _kill_before_the_record)],
    ],
    ids=["killed-after-save-at-eval-step", "preempted-at-eval-step", "final-eval-then-killed"],
)
def test_every_evaluation_is_logged_once_whatever_interrupts_the_run(
    finished: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tries: list
) -> None:
    """Interrupted runs log the same rows as the uninterrupted one: each step and each
    evaluation once, with the same values (evaluations at 2, 4, ..., 18 and the final one)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # no `scontrol requeue` on the stop
    args = [*finished[0], f"paths.runs={tmp_path}"]
    for name, fault in tries:
        with monkeypatch.context() as patch:
            owner, _, attr = name.rpartition(".")
            patch.setattr(getattr(trainer, owner) if owner else trainer, attr, fault)
            with pytest.raises((Killed, Preempted)):
                train(compose_run(args))
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert record["loss"] == pytest.approx(finished[1]["loss"], abs=1e-6)

    def rows(directory: Path) -> list[tuple]:
        return [(r["step"], "val_loss" in r, r.get("loss", r.get("val_loss")))
                for r in metrics_rows(directory)]  # fmt: skip

    got, want = rows(run_dir(compose_run(args))), rows(finished[2])
    assert [r[:2] for r in got] == [r[:2] for r in want]
    assert [r[2] for r in got] == pytest.approx([r[2] for r in want], abs=1e-6)


def test_a_failure_after_the_completed_record_leaves_it_completed(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is the system of record: an error in the teardown after it (a process group
    that fails to close) must not turn it into `failed`, or the next launch retrains the run
    from scratch (its checkpoints are gone by then)."""

    def broken_teardown() -> None:
        raise RuntimeError("process group teardown failed")

    monkeypatch.setattr(trainer, "teardown_distributed", broken_teardown)
    args = [*TINY, "tokens=8192", f"data.dir={demo_data}", f"paths.runs={tmp_path}"]
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert read_record(run_dir(compose_run(args)))["status"] == "completed"


def test_metrics_rows_are_on_disk_before_a_checkpoint_or_the_record_covers_them(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that dies (not only its process) loses what is in its page cache: checkpoints
    and the record are fsynced, so the metrics rows they cover must be too, or a resume after
    a node loss starts past rows that are gone."""
    synced: dict[str, int] = {}  # metrics.jsonl's size at its last fsync
    fsync = os.fsync

    def fsync_and_note(fd: int) -> None:
        fsync(fd)
        if os.readlink(f"/proc/self/fd/{fd}").endswith(METRICS_NAME):
            synced["size"] = os.fstat(fd).st_size

    def check(out_dir: Path) -> None:
        assert synced.get("size") == (out_dir / METRICS_NAME).stat().st_size

    save_checkpoint, write_json_atomic = trainer.save_checkpoint, trainer.write_json_atomic
    saves: list[int] = []

    def checked_save(out_dir: Path, step: int, *args: object, **kwargs: object) -> None:
        check(out_dir)
        saves.append(step)
        save_checkpoint(out_dir, step, *args, **kwargs)

    def checked_record(path: Path, record: object) -> None:
        check(path.parent)
        write_json_atomic(path, record)

    monkeypatch.setattr(os, "fsync", fsync_and_note)
    monkeypatch.setattr(trainer, "save_checkpoint", checked_save)
    monkeypatch.setattr(trainer, "write_json_atomic", checked_record)
    args = [*TINY, "tokens=16384", f"data.dir={demo_data}", f"paths.runs={tmp_path}"]
    record = train(compose_run(args))
    assert record["status"] == "completed", record["error"]
    assert saves == [4]


def test_a_kill_between_the_record_and_the_checkpoint_removal_leaves_no_checkpoints(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint.keep_on_success=false: the next start of the completed run removes them."""
    args = [*TINY, "tokens=16384", "checkpoint.keep_on_success=false"]
    args += [f"data.dir={demo_data}", f"paths.runs={tmp_path}"]

    def die(run: Path) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(trainer, "remove_checkpoint", die)
        with pytest.raises(Killed):
            train(compose_run(args))
    directory = run_dir(compose_run(args))
    assert complete_checkpoints(directory)  # the record is written, the checkpoints are left
    assert train(compose_run(args))["status"] == "completed"
    assert not (directory / "checkpoint").exists()


def test_a_save_killed_half_way_is_pruned_with_the_old_checkpoints(
    tmp_path: Path, demo_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop at step 5 whose save dies half-way leaves step-5.tmp; the resumed run saves
    steps 8 and on, never 5 again, so the next save must remove it (it is a checkpoint's size)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    args = [*TINY, "tokens=24576", f"data.dir={demo_data}", f"paths.runs={tmp_path}"]

    atomic_open = checkpoint.atomic_open

    def die_at_5(path: Path, *args: object) -> object:  # the train state, after the shards
        if path.parent.name == "step-000000005.tmp":
            raise Killed
        return atomic_open(path, *args)

    with monkeypatch.context() as patch:
        patch.setattr(trainer.Trainer, "train_step", _signal_at(5))
        patch.setattr(checkpoint, "atomic_open", die_at_5)
        with pytest.raises(Killed):
            train(compose_run(args))
    root = run_dir(compose_run(args)) / "checkpoint"
    assert sorted(p.name for p in root.iterdir()) == ["step-000000004", "step-000000005.tmp"]
    assert train(compose_run(args))["status"] == "completed"
    assert sorted(p.name for p in root.iterdir()) == ["step-000000004", "step-000000008"]
