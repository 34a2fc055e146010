"""Distributed data parallel and mixed precision for the training scripts.

    torchrun --nproc_per_node 2 -m training.segmentation.train_segmentation --run-dir RUN ...   # 2 processes (gloo on CPU,
                                                                                    # nccl with one GPU each)
    python -m training.segmentation.train_segmentation --run-dir RUN ...                         # one process, no torch.distributed

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them everything runs in one
process. Sampling is random with replacement, so the DistributedSampler equivalent is one independent crop stream
per rank: each step's batch is drawn from its own generator seeded by ``crop_seed`` (seed, step, rank), and rank 0's
stream is the single-process stream, so a one-process run is unchanged.
Mixed precision: float16 autocast + GradScaler on CUDA (``--amp``, the default); bfloat16 autocast on a CPU that
computes bfloat16 natively only when asked (``--cpu-bf16``: 1.7x faster a step here, AVX512-BF16 and AMX); otherwise
float32.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import ContextManager, List, Optional

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    """Where this process stands: rank / world size, its device, the process-group backend (None: one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes checkpoints, logs and records."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def mean(self, value: float) -> float:
        """Mean of a scalar over the ranks (the value itself in one process)."""
        if not self.distributed:
            return float(value)
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def in_sync(self, module: torch.nn.Module) -> bool:
        """True when every rank holds the same parameters (compares float64 sums and sums of squares)."""
        if not self.distributed:
            return True
        flat = torch.cat([p.detach().double().flatten() for p in module.parameters()])
        stats = torch.stack([flat.sum(), (flat * flat).sum(), (flat * torch.arange(flat.numel(), dtype=torch.float64,
                                                                                        device=flat.device)).sum()])
        stats = stats.to(self._collective_device)
        high, low = stats.clone(), stats.clone()
        dist.all_reduce(high, op=dist.ReduceOp.MAX)
        dist.all_reduce(low, op=dist.ReduceOp.MIN)
        return bool(torch.equal(high, low))

    @property
    def _collective_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def uses_cuda(device: str) -> bool:
    """Whether ``device`` (auto, cpu or cuda) trains on CUDA here."""
    return device != "cpu" and torch.cuda.is_available()


def setup(device: str = "auto") -> DistributedContext:
    """Read torchrun's environment, pick this rank's device and join the process group when WORLD_SIZE > 1.

    ``device``: auto (CUDA when available), cpu or cuda (an error when CUDA is missing).
    """
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {device!r}")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = uses_cuda(device)
    if device == "cuda" and not use_cuda:
        raise RuntimeError("--device cuda was requested but CUDA is not available")
    target = torch.device("cuda", local_rank % max(1, torch.cuda.device_count())) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(target)
    backend = None
    if world_size > 1:
        backend = backend_for(target)
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, target, backend)


def wrap(model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module:
    """``model`` on the context's device, inside DistributedDataParallel when distributed.

    find_unused_parameters: a modality absent from every crop of a rank's batch leaves its stem without gradient
    on that rank only.
    """
    model.to(context.device)
    if not context.distributed:
        return model
    ids = [context.device.index] if context.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside DDP (or ``model`` itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def crop_seed(seed: int, step: int, rank: int = 0) -> List[int]:
    """Seed of the generator of ``step``'s batch for ``rank``: independent per rank and step, rank 0 = the
    one-process stream."""
    return [seed, step] if rank == 0 else [seed, step, rank]


class PrecisionError(ValueError):
    """Mixed precision asked for where it would be emulated: one line for the user."""


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX); elsewhere torch emulates them, far slower.
    (torch's private probes; a torch without them counts as no.)"""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(bool(probe()) for probe in probes if probe is not None)


def mixed_precision(device: torch.device, amp: bool = True, cpu_bf16: bool = False) -> Optional[torch.dtype]:
    """The autocast dtype of training on ``device``: float16 on CUDA with ``amp``, bfloat16 on the CPU with
    ``cpu_bf16`` (PrecisionError where the CPU would emulate it), else None (float32)."""
    if device.type == "cuda":
        return torch.float16 if amp else None
    if not cpu_bf16:
        return None
    if not cpu_computes_bf16():
        raise PrecisionError("--cpu-bf16: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX); "
                             "torch would emulate them, far slower than float32")
    return torch.bfloat16


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Autocast to ``dtype`` on ``device`` (from :func:`mixed_precision`); a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(dtype: Optional[torch.dtype]) -> "torch.amp.GradScaler":
    """A GradScaler that scales only for float16 (bfloat16 has float32's range; otherwise calls pass through)."""
    return torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
