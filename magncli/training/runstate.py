"""What a training run keeps beside its model, for the Trainer (training/loop.py) to save
and restore: the EMA weights, the RNG states, atomic saves of the resume point, and a
description of the hardware. The run folder's files themselves: magncli/runs/folder.py.
"""
from __future__ import annotations

import copy
import os
import platform
import random
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from torch import nn

from magncli.fileio import atomic_path


class EMA:
    """Exponential moving average of the weights: the model that is validated and exported.

    ema = d * ema + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n)) after n
    updates: early on the average follows the weights instead of remembering the random
    initialisation (which would make short runs look untrained). Floating-point buffers
    (BatchNorm running statistics) are averaged alike, as timm's ModelEmaV2 does: copied,
    they were the live weights' statistics of the last few batches, and after a jump of
    the live weights the averaged weights met statistics that were not theirs (held-out
    validation of a JPEG run fell from 32.7 to 27.4 dB for one checkpoint, q90 from 40.2
    to 22.9, and came back at the next). Integer buffers (counters) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # One foreach call for all the weights and float buffers (a Python loop of lerps cost
        # 3x as long, and it is serial work beside every step).
        pairs = [(e, w) for e, w in zip([*self.model.parameters(), *self.model.buffers()],
                                        [*model.parameters(), *model.buffers()]) if e.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [w.detach() for _, w in pairs], 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            if not ema_b.is_floating_point():
                ema_b.copy_(b)
        self.updates += 1


def rng_states() -> dict:
    """torch, CUDA, numpy and Python RNG states as tensors, lists and numbers only, so that
    torch.load(weights_only=True) reads them back (numpy's own state holds an ndarray)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def hardware_string(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{world}x {name}" if world > 1 else name


def cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
