"""The Python API's array functions: what `magncli.restore_array` and
`magncli.restore_for_task` do for a user's numpy array, on top of the engine's.

    restored = restore_array(model, pixels)              # uint8/uint16/float in, float32 in [0, 1] out
    restored = restore_array(model, noisy, level=25)     # a denoiser with a level map, told sigma
    rgb = restore_for_task(model, cfa, "demosaic")       # the task's view: any Bayer phase

Pixels are taken as a file would give them: uint8 and uint16 scaled by their range to
[0, 1], float as it is; any other dtype is refused in one line. A 2-D gray array, or
(H, W, 1), goes through a color model with its channel replicated, as `magn restore`
does. Outputs are clamped to [0, 1], as an image is (the engine's own functions,
magncli.inference.restore_array and magncli.tasks.restore_for_task, return them
unclipped, for scoring and for spotting a network that broke down).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
from torch import nn

from magncli import tasks
from magncli.degrade import AUTO_PATTERN
from magncli.errors import MagnError
from magncli.inference import InferenceOptions, ProgressCallback
from magncli.models.registry import facts

# The integer dtypes images come in, and the value that is 1.0 in each.
_PEAKS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def as_float_image(image) -> np.ndarray:
    """uint8, uint16 or float pixels, (H, W) or (H, W, C) -> float32 (H, W, C) in the
    0-1 scale; MagnError for another dtype or shape."""
    arr = np.asarray(image)
    if arr.dtype in _PEAKS:
        arr = arr.astype(np.float32) / _PEAKS[arr.dtype]
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32)
    else:
        raise MagnError(f"image pixels of dtype {arr.dtype} are not supported: pass uint8, uint16 "
                        "or float (0-1) pixels")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise MagnError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    return arr


def model_task(model: nn.Module) -> Optional[str]:
    """The task a checkpoint's metadata says its model was trained for (None: not said)."""
    return (getattr(model, "checkpoint_meta", None) or {}).get("task")


def restore_for_task(model: nn.Module, image, task, *, pattern: Optional[str] = AUTO_PATTERN,
                     level: Optional[float] = None, options: Optional[InferenceOptions] = None,
                     progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """Restore one degraded image of `task` as `magn restore` does (tasks.restore_for_task:
    a Bayer mosaic of any pattern, "auto" reading it off the mosaic; a gray image
    through a color model; a model with a level map told `level`, or "unknown" when
    None). Returns float32 (H, W, C) clamped to [0, 1]; (H, W) for a 2-D input."""
    x = as_float_image(image)
    task = tasks.get_task(task)
    if level is not None:
        if not facts(model).level_input:
            raise MagnError(f"{getattr(model, 'arch', type(model).__name__)} has no level map: "
                            f"it cannot be told {task.level_key or 'a level'}")
        level = task.check_level(level)
    y = tasks.restore_for_task(model, x, task, pattern=pattern, level=level, options=options,
                               progress=progress)
    return _as_image(y, two_d=np.ndim(image) == 2)


def restore_array(model: nn.Module, image, options: Optional[InferenceOptions] = None,
                  progress: Optional[ProgressCallback] = None, *, level: Optional[float] = None,
                  task: Optional[str] = None, pattern: Optional[str] = AUTO_PATTERN) -> np.ndarray:
    """Restore an (H, W) or (H, W, C) image (uint8, uint16 or float in [0, 1]) with
    `model`; returns float32 of the same height and width, clamped to [0, 1].

    The task is the one the model's checkpoint states (or `task=`), and the image is
    seen as that task's models see it (restore_for_task): a model with a level map
    runs told `level` (sigma or JPEG quality), or "unknown" without it; a demosaicer
    reads the Bayer `pattern` off the mosaic unless told. A model that
    states no task is run on the image as it is, a gray image through a color model
    with its channel replicated."""
    task = task or model_task(model)
    if task is not None:
        return restore_for_task(model, image, task, pattern=pattern, level=level, options=options,
                                progress=progress)
    stated = facts(model)
    if stated.level_input or level is not None:
        raise MagnError("this model's task is not known, so neither is the scale of its level map: "
                        "pass task=NAME (" + ", ".join(tasks.TASKS) + ")")
    x = as_float_image(image)
    replicate = stated.in_channels == 3 and x.shape[2] == 1
    from magncli.inference import restore_array as engine_restore
    y = engine_restore(model, np.repeat(x, 3, axis=2) if replicate else x, options, progress)
    if replicate:
        y = y.mean(axis=2, keepdims=True)
    return _as_image(y, two_d=np.ndim(image) == 2)


def _as_image(restored: np.ndarray, two_d: bool) -> np.ndarray:
    """An (H, W, C) output as an image: clamped to [0, 1], (H, W) for a 2-D input."""
    out = np.clip(restored, 0.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(out[..., 0] if two_d and out.shape[2] == 1 else out)
