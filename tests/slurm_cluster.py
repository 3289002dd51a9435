"""A private SLURM cluster on loopback (one node, or two slurmd daemons), for tests and trials.

A real SLURM on one machine (docs/science.md, facts about the stack): its own munged and key, a slurm.conf in a
temp dir reached through ``SLURM_CONF``, free non-default ports, proctrack/linuxproc, no cgroups,
two fake GPUs, and ``accounting_storage/none`` with a small ``sacct`` stand-in (first on ``PATH``)
that answers submitit's state queries from ``squeue`` (``MinJobAge`` keeps finished jobs there).
Daemons are stopped by the PIDs in their pid files, never by name. ``nodes=2`` starts two
slurmd daemons on this host (nodes ``n1`` and ``n2``), each with its own port, spool, pid and
log file, so multi-node jobs run for real.

As a script: ``python tests/slurm_cluster.py start DIR`` prints the environment to export;
``python tests/slurm_cluster.py stop DIR`` stops it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REQUIRED_BINARIES = ("slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "munged")
MAX_ARRAY_SIZE = 128  # small on purpose: a 289-run sweep needs several arrays (chunking is tested)
NODE_CPUS = 8
NODE_MEMORY_MB = 16000

_SACCT_STAND_IN = """#!/bin/bash
# sacct stand-in for a cluster without accounting: answers `sacct -o JobID,State,NodeList
# --parsable2 -j ID ...` (what submitit asks) from squeue, which keeps ended jobs for MinJobAge.
ids=()
while [ $# -gt 0 ]; do
  case "$1" in
    -j|--jobs) ids+=("$2"); shift 2 ;;
    -j*) ids+=("${1#-j}"); shift ;;
    --jobs=*) ids+=("${1#--jobs=}"); shift ;;
    *) shift ;;
  esac
done
echo "JobID|State|NodeList"
[ ${#ids[@]} -eq 0 ] && exit 0
for id in "${ids[@]}"; do
  squeue -h -r -t all -j "$id" -o "%i|%T|%N" 2>/dev/null
done
exit 0
"""


def missing_binaries() -> list[str]:
    """SLURM/munge programs this machine lacks (the tests skip or fail on them)."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(predicate, deadline_s: float, what: str, log: Path | None = None) -> None:
    """Poll ``predicate`` until it holds; TimeoutError naming ``what`` (and the log's tail)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise TimeoutError(f"{what} not reached within {deadline_s:.0f} s\n{tail}")


@dataclass
class SlurmCluster:
    """A running loopback cluster rooted at ``root``; ``env`` reaches it from subprocesses."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to a process environment so SLURM commands use this cluster."""
        return {
            "SLURM_CONF": str(self.conf),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def apply_env(self) -> None:
        """Point this process (and its children) at the cluster."""
        os.environ.update(self.env)

    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster and return its stdout."""
        env = {**os.environ, **self.env}
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def node_state(self) -> str:
        """The nodes' common state (``idle`` once all are up), or their states joined by ','."""
        try:
            states = self.run("sinfo", "-h", "-N", "-o", "%T", timeout=10).split()
        except (RuntimeError, subprocess.TimeoutExpired):
            return ""
        return ",".join(sorted(set(states)))

    def stop(self) -> None:
        """Cancel the jobs, let their steps finish, then stop the daemons by their pid files.

        slurmd must outlive the job steps: a slurmstepd whose slurmd is gone never exits, so
        any left over (found by this cluster's SLURM_CONF in their environment) is killed by PID.
        """
        if (self.root / "run" / "slurmctld.pid").exists():
            try:
                self.run("scancel", "--user=root", timeout=10)
                wait_for(lambda: not self._active_jobs(), 30, "jobs ended")
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
                pass
        pid_files = sorted((self.root / "run").glob("slurmd*.pid"))
        pid_files += [self.root / "run" / f"{name}.pid" for name in ("slurmctld", "munged")]
        for pid_file in pid_files:
            if not pid_file.exists():
                continue
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (ValueError, IndexError, ProcessLookupError):
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            pid_file.unlink(missing_ok=True)
        for pid in self._step_daemons():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _active_jobs(self) -> bool:
        states = self.run("squeue", "-h", "-o", "%T", timeout=10).split()
        return any(s in ("RUNNING", "COMPLETING", "CONFIGURING") for s in states)

    def _step_daemons(self) -> list[int]:
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "comm").read_text().strip() == "slurmstepd" and marker in (
                    proc / "environ"
                ).read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of this process counts as gone
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        return waited == 0
    except ChildProcessError:
        return True


def node_names(count: int) -> list[str]:
    """Node names: ``localhost`` alone, else ``n1``..``nN`` (all NodeAddr=127.0.0.1).

    SLURM reads NodeName=localhost as this host's name, so several daemons need other names;
    they do not resolve, as on clusters whose node names are not DNS names: jobs reach the
    first node through its NodeAddr (qat_sweep.train.distributed asks scontrol).
    """
    return ["localhost"] if count == 1 else [f"n{i}" for i in range(1, count + 1)]


def _node_lines(nodes: list[str], ports: list[int]) -> str:
    """NodeName lines; several slurmd daemons on one host need one port each."""
    if len(nodes) == 1:
        return (
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
            f"RealMemory={NODE_MEMORY_MB} Gres=gpu:2 State=UNKNOWN"
        )
    return "\n".join(
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
        f"CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:2 State=UNKNOWN"
        for name, port in zip(nodes, ports, strict=True)
    )


def _slurm_conf(
    root: Path,
    ctld_port: int,
    slurmd_port: int,
    socket_path: Path,
    nodes: list[str] | None = None,
    node_ports: list[int] | None = None,
) -> str:
    nodes = nodes or ["localhost"]
    per_node = "-%n" if len(nodes) > 1 else ""  # one spool, pid and log file per slurmd
    return f"""\
ClusterName=qatsweep
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={socket_path}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool{per_node.replace("-", "/")}
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd{per_node}.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd{per_node}.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=3600
MaxArraySize={MAX_ARRAY_SIZE}
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
{_node_lines(nodes, node_ports or [slurmd_port])}
PartitionName=debug Nodes={",".join(nodes)} Default=YES MaxTime=INFINITE State=UP
"""


def start_cluster(root: str | Path, deadline_s: float = 60, nodes: int = 1) -> SlurmCluster:
    """Write the configs under ``root`` and start munged, slurmctld and slurmd(s); wait until idle."""
    root = Path(root).resolve()
    cluster = SlurmCluster(root)
    names = node_names(nodes)
    for sub in ("state", "spool", "run", "log", "bin", "munge", "dev"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name in names if nodes > 1 else []:
        (root / "spool" / name).mkdir(exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(root / "munge", 0o755)  # munged refuses a socket directory that is not 0755

    key = root / "munge" / "munge.key"
    if not key.exists():
        subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    os.chmod(key, 0o600)
    socket_path = root / "munge" / "munge.socket"
    subprocess.run(
        [
            "munged",
            "--force",
            f"--socket={socket_path}",
            f"--key-file={key}",
            f"--pid-file={root}/run/munged.pid",
            f"--log-file={root}/log/munged.log",
            f"--seed-file={root}/munge/munged.seed",
        ],
        check=True,
    )

    ctld_port, slurmd_port, *node_ports = _free_ports(2 + len(names))
    cluster.conf.write_text(
        _slurm_conf(root, ctld_port, slurmd_port, socket_path, names, node_ports)
    )
    for i in range(2):
        (root / "dev" / f"gpu{i}").touch()
    (root / "gres.conf").write_text(
        "".join(
            f"NodeName={name} Name=gpu File={root}/dev/gpu{i}\n" for name in names for i in range(2)
        )
    )
    sacct = cluster.bin_dir / "sacct"
    sacct.write_text(_SACCT_STAND_IN)
    sacct.chmod(0o755)

    env = {**os.environ, **cluster.env}
    subprocess.run(["slurmctld", "-i"], env=env, check=True)
    for name in names:
        subprocess.run(["slurmd", "-N", name], env=env, check=True)
    try:
        wait_for(
            lambda: cluster.node_state() == "idle",
            deadline_s,
            "SLURM node idle",
            root / "log" / "slurmctld.log",
        )
    except TimeoutError:
        cluster.stop()
        raise
    return cluster


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python tests/slurm_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    command, root = argv
    if command == "start":
        cluster = start_cluster(root)
        print(json.dumps(cluster.env, indent=2))
        print(f"# export SLURM_CONF={cluster.conf} PATH={cluster.bin_dir}:$PATH")
    else:
        SlurmCluster(Path(root).resolve()).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
