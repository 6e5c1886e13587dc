"""`magn train --task T --data DIR` with no recipe: settings that fit the machine and the data.

A recipe (train/*.toml) says everything; a user with a folder of photos says two things.
The rest used to be the paper's settings, meant for a GPU: on a 2-core CPU with 24 GB the
paper's network at batch 32, patch 64 with 4 loader processes grew to 23 GB and was
killed before step 100; color photos trained a gray model; there was no validation. Here:

- on a machine without a GPU, the settings the published checkpoints were trained with
  (CPU_PRESET: `magn-s-local`, batch 16, patch 48, data in the training process, bf16
  where the CPU has it natively);
- channels follow the data (color when any of its first images is color);
- a tenth of the images (2 to 20) held out for validation when no --val is given;
- a warning where the warm-up is longer than the run.

Flags always win: each of these fills only what nobody set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from magncli.errors import MagnError
from magncli.images import read_image
from magncli.tasks import get_task

# train/cpu-s.toml with the local-graph variant, in the package (train/ is not installed).
CPU_PRESET: Dict[str, Any] = dict(
    arch="magn-s-local", batch=16, patch=48, steps=30000, lr=1e-3, min_lr=1e-5, warmup_steps=500,
    grad_clip_median=4.0, workers=0, val_every=1000, ckpt_every=1000, log_every=100)
# Images whose channels decide the run's: enough to meet a color photo among gray ones.
CHANNEL_PROBE = 8
HOLDOUT_SHARE, HOLDOUT_MIN, HOLDOUT_MAX = 0.1, 2, 20
# Fewer images than this and nothing is held out (the few there are all train).
HOLDOUT_FROM = 10


def plain_settings(flags: Dict[str, Any], *, on_cpu: bool, native_bf16: bool,
                   images: List[Path], is_color: Callable[[Path], bool]) -> Dict[str, Any]:
    """The settings of a run with no recipe: the machine's preset, the data's channels and
    a held-out split, each where `flags` (the command line's, None = not given) is silent."""
    given = {k: v for k, v in flags.items() if v is not None}
    settings: Dict[str, Any] = {}
    if on_cpu:
        settings.update(CPU_PRESET, precision="bf16" if native_bf16 else "fp32")
    task = get_task(given.get("task", "denoise"))
    if "channels" not in given:
        settings["channels"] = 3 if task.mosaic or any(is_color(p) for p in images[:CHANNEL_PROBE]) else 1
    if on_cpu and "steps" in given:          # the preset's warm-up is a tenth of a short run at most
        settings["warmup_steps"] = min(CPU_PRESET["warmup_steps"], given["steps"] // 10)
    if "val" not in given and len(images) >= HOLDOUT_FROM:
        settings["val_holdout"] = max(HOLDOUT_MIN, min(HOLDOUT_MAX, int(len(images) * HOLDOUT_SHARE)))
    return {**settings, **given}


def is_color(path: Path) -> bool:
    """Whether an image file holds colour: three channels that are not all the same. An
    unreadable file says nothing here (the run's scan of the folder reports it)."""
    try:
        pixels = read_image(path).pixels                                       # (H, W, C)
    except MagnError:
        return False
    return pixels.shape[2] >= 3 and not (np.array_equal(pixels[..., 0], pixels[..., 1])
                                         and np.array_equal(pixels[..., 1], pixels[..., 2]))


def warnings_for(config) -> List[str]:
    """What a user should hear before a run (any run) whose settings fight each other."""
    out = []
    if config.warmup_steps >= config.steps:                  # every schedule warms up first
        out.append(f"the warm-up ({config.warmup_steps} steps) is as long as the run ({config.steps} steps): "
                   "the learning rate never reaches its peak (lower warmup_steps, or train more steps)")
    return out
