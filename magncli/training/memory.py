"""Will a training run fit in memory? An estimate before the first step, so that a run too
big for the machine is refused in one line rather than killed by the kernel mid-way (the
paper's settings on a 24 GB CPU machine grew to 23 GB and died before step 100).

    activations   what autograd saves for the backward pass, measured on one sample by a
                  forward pass under saved_tensors_hooks, times the batch, times 1.5 for
                  the backward pass's own temporaries
    weights       weights, gradients, Adam's two moments and the EMA: 5 fp32 copies
    data          the training images as held in memory, once per loader process
    the process   what it holds already (torch, the images decoded so far)
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from magncli.errors import MagnError

BACKWARD_OVERHEAD = 1.5
WEIGHT_COPIES = 5
# Refused above this share of the memory available to the run.
FIT_SHARE = 0.9


def saved_activation_bytes(model: nn.Module, sample: torch.Tensor, amp_dtype: torch.dtype) -> int:
    """Bytes autograd saves for backward in one forward pass of `sample` (B, C, p, p)."""
    seen = {}

    def pack(t: torch.Tensor):
        if t.device.type == "cpu" or t.is_cuda:
            seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(sample.device.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            model(sample)
    return sum(seen.values())


def process_rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def available_bytes() -> Optional[int]:
    """Memory a new allocation can have (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def training_bytes(model: nn.Module, sample: torch.Tensor, amp_dtype: torch.dtype, batch: int,
                   data_bytes: int, workers: int) -> int:
    """The estimate of the module docstring, beyond what the process holds now."""
    activations = saved_activation_bytes(model, sample, amp_dtype) * batch * BACKWARD_OVERHEAD
    weights = sum(p.numel() for p in model.parameters()) * 4 * WEIGHT_COPIES
    return int(activations + weights + data_bytes * workers)


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_training_fits(model: nn.Module, config, input_channels: int, data_bytes: int,
                        memory_format: torch.memory_format, amp_dtype: torch.dtype) -> None:
    """Refuse, in one line, a run (`config`, a TrainConfig) that would not fit in the memory
    available to it, before its first step rather than at the kernel's hand. The trial
    forward pass leaves the model's buffers (BatchNorm's statistics) as they were."""
    available = available_bytes()
    if available is None:
        return
    sample = torch.rand(1, input_channels, config.patch, config.patch,
                        generator=torch.Generator().manual_seed(0))                # (1, C, p, p)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    need = training_bytes(model, sample.to(memory_format=memory_format), amp_dtype,
                          config.batch, data_bytes, config.workers)
    with torch.no_grad():
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
    if need > FIT_SHARE * available:
        raise MagnError(f"this run would need about {gib(need)} beyond the "
                        f"{gib(process_rss_bytes())} magn holds, and "
                        f"{gib(available)} is available: lower batch= ({config.batch}) or "
                        f"patch= ({config.patch}), use workers=0 ({config.workers}), or a smaller "
                        f"arch= ({config.arch}; magn-s-local is the CPU's)")
