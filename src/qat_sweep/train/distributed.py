"""torch.distributed setup from torchrun or a SLURM job (one or more nodes); DDP or FSDP2.

FSDP2 (``fully_shard``) shards the embedding, every block and the lm_head, then the root, so
at most two of those units are unsharded at a time. DDP keeps the whole fp32 state on every
GPU. Both compute alike: fp32 parameters (FSDP gathers them in fp32), bf16 matmuls under CUDA
autocast, an fp32 residual stream and fp32 quantizer inputs where the residual feeds them, and
fp32 gradient reductions; so a BF16 run and its quantized twin differ by quantization, not by
the dtype their parallelism computes in (docs/science.md).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun or as one of several SLURM tasks.

    torchrun exports RANK/WORLD_SIZE/MASTER_*; a SLURM job with several tasks per node (what
    `launch` submits for multi-GPU profiles) only has SLURM_* variables, which submitit's
    TorchDistributedEnvironment turns into the same torch.distributed variables.
    """
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        export_slurm_environment()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device_type)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    device = f"cuda:{local_rank}" if device_type == "cuda" else "cpu"
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def export_slurm_environment() -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT of this SLURM task, on any number of nodes.

    submitit derives them from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and the first host of
    SLURM_JOB_NODELIST (scontrol show hostnames), with a port derived from the job id: every
    task of every node of the job agrees on the rendezvous without talking first.
    """
    from submitit.helpers import TorchDistributedEnvironment

    if "SLURM_JOB_ID" in os.environ:  # srun/sbatch jobs not submitted by submitit lack it
        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
    env = TorchDistributedEnvironment()
    env.export(set_cuda_visible_devices=False)
    os.environ["MASTER_ADDR"] = _reachable_address(os.environ["MASTER_ADDR"])
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {key: os.environ[key] for key in keys}


def _reachable_address(node: str) -> str:
    """The node itself when its name resolves, else SLURM's NodeAddr for it (node names need
    not be DNS names)."""
    import socket
    import subprocess

    try:
        socket.getaddrinfo(node, None)
        return node
    except socket.gaierror:
        pass
    out = subprocess.run(
        ["scontrol", "show", "node", "-o", node], capture_output=True, text=True, timeout=30
    ).stdout
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def resolve_parallelism(wanted: str, info: DistInfo) -> str:
    """The parallelism a run uses: ``auto`` is DDP for several processes; one uses neither.

    ``wanted`` is a word of the run schema (composition refused any other); what it allows
    depends on how many processes were started.
    """
    if info.world_size == 1:
        if wanted in ("ddp", "fsdp"):
            raise ValueError(
                f"train.parallelism={wanted} needs several processes (torchrun or a multi-GPU "
                "SLURM job); this is one process: allowed: auto, single"
            )
        return "single"
    if wanted == "single":
        raise ValueError(
            f"train.parallelism=single but {info.world_size} processes were started; "
            "allowed: auto, ddp, fsdp"
        )
    return "ddp" if wanted == "auto" else wanted


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block in backward (keeps FQNs, composes with fully_shard)."""
    from torch.distributed._composable import checkpoint

    for block in model.blocks:
        checkpoint(block)


def wrap_model(model: nn.Module, parallelism: str, info: DistInfo) -> nn.Module:
    """The module the training step calls: the model itself (single, FSDP in place) or DDP."""
    if parallelism == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.startswith("cuda") else None
        # gradients as views of DDP's buckets: no second fp32 copy of them
        return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
    if parallelism == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()  # fp32 gathers: autocast computes in bf16 as under DDP
        for unit in [model.embed, *model.blocks, model.lm_head]:
            fully_shard(unit, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
    return model


def no_grad_sync(
    train_model: nn.Module, last_micro_batch: bool
) -> contextlib.AbstractContextManager:
    """DDP skips the all-reduce on all but the last micro-batch; FSDP reduce-scatters each one
    (keeping unsharded gradients across micro-batches would cost what FSDP saves)."""
    if last_micro_batch or not hasattr(train_model, "no_sync"):
        return contextlib.nullcontext()
    return train_model.no_sync()


def full_norm(norm: torch.Tensor) -> torch.Tensor:
    """clip_grad_norm_ returns a DTensor under FSDP: the full value on every rank."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[None]:
    """Whole parameters inside (FSDP), for code that reads weights outside a forward."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True when any rank raised the flag: all ranks must stop at the same step."""
    return any_ranks((flag,), info)[0]


def any_ranks(flags: tuple[bool, ...], info: DistInfo) -> tuple[bool, ...]:
    """Each flag OR-ed over the ranks in one all-reduce (stop and save decisions are shared)."""
    if info.world_size == 1:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in t.tolist())


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
