"""`launch --dry-run`: the sbatch scripts a SLURM launch would submit, on any machine.

The scripts are submitit's own (`SlurmExecutor` turns the same executor parameters that
`launch.submit_slurm` passes into the same sbatch text), so the preview cannot drift from what
is submitted. Only submitit's check for `srun` is skipped: nothing is submitted.
"""

from __future__ import annotations

from pathlib import Path

from submitit.slurm.slurm import SlurmExecutor

from qat_sweep.sweep.profiles import LaunchProfile, executor_parameters

SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001  # array indices < MaxArraySize; SLURM's default


class _ScriptWriter(SlurmExecutor):
    """submitit's SLURM executor that only writes scripts: it needs no `srun` on this machine."""

    @classmethod
    def affinity(cls) -> int:
        return 1


def sbatch_script(
    shape: LaunchProfile,
    tasks: int,
    folder: Path,
    parallelism: int | None = None,
    after: str | None = None,
) -> str:
    """The sbatch script of one job array of ``tasks`` runs with the resources of ``shape``
    (``parallelism`` and ``after`` as `profiles.executor_parameters` takes them)."""
    writer = _ScriptWriter(folder / "%j")
    params = executor_parameters(shape, parallelism, after)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    specific = {k.removeprefix("slurm_"): v for k, v in params.items() if k.startswith("slurm_")}
    writer.update_parameters(**writer._convert_parameters(generic), **specific)
    writer.parameters["map_count"] = tasks  # an array, as `executor.batch()` submits it
    return writer._make_submission_file_text(writer._submitit_command_str, "preview")
