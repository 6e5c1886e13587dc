"""What `magn eval` scores: a Method turns a degraded float32 (H, W, C) image on [0, 1]
into a restored one of the same shape, and is one row of the tables. Built-in
baselines need no weights:

    input            the degraded image itself (the "input rows" of the protocol page)
    opencv-nlm       non-local means (denoise)
    opencv-bilinear  OpenCV demosaicing: bilinear, edge-aware, VNG (demosaic)
    opencv-ea
    opencv-vng
    bm3d             BM3D (denoise), only where `pip install bm3d` was done

Any other name is a model: a checkpoint name or path, or ARCH:PATH (e.g. dagl:model.pt),
loaded with magncli.load_model and run as `magn restore` runs it; "default" is the task's
published default checkpoint for each set's channels (the one `magn restore` picks).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from magncli.degrade import mosaic_to_cfa
from magncli.errors import MagnError
from magncli.images import to_uint8
from magncli.tasks import TASKS, Degradation, Task, restore_for_task


@dataclass
class Method:
    """A named way to restore an image, one row of the tables: a baseline or a model.
    (Not magncli.restore.Restorer, which restores image files.) `restore(degraded,
    degradation)` gets the known degradation too, so that non-blind baselines can use
    sigma or the Bayer pattern; models ignore it."""

    name: str
    restore: Callable[[np.ndarray, Degradation], np.ndarray]
    tasks: Tuple[str, ...] = tuple(TASKS)   # the names of the tasks it does
    # The protocol's input rows score the degraded input as it is: Gaussian noise is
    # unclipped (clamping would add ~0.2 dB at sigma 25). Every real output is clamped.
    clamp_output: bool = True
    device: Optional[str] = None  # models: their device ("auto", "cuda:0", ...) for memory
    requires: Optional[str] = None  # an optional package it imports
    model: Optional[Any] = None     # models: the nn.Module (its tile plan goes into the row)
    checkpoint: Optional[str] = None  # a model the row names by role ("default"): its checkpoint


def _identity(degraded: np.ndarray, degradation: Degradation) -> np.ndarray:
    return degraded


def nlm_strength(sigma: float, color: bool) -> float:
    """NLM filter strength h for noise sigma (0-255), one rule for every level. Tuned on a
    few images at sigma 15/25/50: gray 0.9 sigma is within 0.6 dB of the best of 0.6-1.2
    sigma (three Set12 images); color 0.6 sigma (h and hColor) was the best of 0.4-1.0 sigma
    (two CBSD68 images). On all of Set12 at sigma 25: 27.91 dB against 20.20 for the input."""
    return (0.6 if color else 0.9) * sigma


def _opencv_nlm(degraded: np.ndarray, degradation: Degradation) -> np.ndarray:
    # OpenCV's NLM takes 8-bit images: the (unclipped) noisy input is rounded first.
    pixels = to_uint8(degraded)  # HxWxC uint8
    if pixels.shape[2] == 3:
        h = nlm_strength(degradation.level, color=True)
        bgr = cv2.fastNlMeansDenoisingColored(np.ascontiguousarray(pixels[..., ::-1]),
                                              None, h, h, 7, 21)
        out = bgr[..., ::-1]
    else:
        h = nlm_strength(degradation.level, color=False)
        out = cv2.fastNlMeansDenoising(np.ascontiguousarray(pixels[..., 0]), None, h, 7, 21)
        out = out[..., None]
    return out.astype(np.float32) / 255.0


def opencv_bayer_code(pattern: str, method: str = "") -> int:
    """The cv2.COLOR_Bayer*2RGB code for our pattern names. OpenCV's two-letter names are
    offset: they name the colours at (1,1) and (1,2), so our GRBG is OpenCV's "GB"."""
    tile = pattern.upper()  # colours at (0,0), (0,1), (1,0), (1,1)
    return getattr(cv2, f"COLOR_Bayer{tile[3]}{tile[2]}2RGB{method}")


def _opencv_demosaic(method: str) -> Callable[[np.ndarray, Degradation], np.ndarray]:
    def restore(degraded: np.ndarray, degradation: Degradation) -> np.ndarray:
        cfa = to_uint8(mosaic_to_cfa(degraded))  # HxW uint8, one sample per site
        rgb = cv2.demosaicing(cfa, opencv_bayer_code(degradation.pattern, method))
        return rgb.astype(np.float32) / 255.0

    return restore


def _bm3d(degraded: np.ndarray, degradation: Degradation) -> np.ndarray:
    import bm3d  # optional: `pip install bm3d`, checked by make_method

    sigma = degradation.level / 255.0
    if degraded.shape[2] == 3:
        return bm3d.bm3d_rgb(degraded, sigma).astype(np.float32)
    return bm3d.bm3d(degraded[..., 0], sigma).astype(np.float32)[..., None]


BASELINES: Dict[str, Method] = {r.name: r for r in (
    Method("input", _identity, clamp_output=False),
    Method("opencv-nlm", _opencv_nlm, tasks=("denoise",)),
    Method("opencv-bilinear", _opencv_demosaic(""), tasks=("demosaic",)),
    Method("opencv-ea", _opencv_demosaic("_EA"), tasks=("demosaic",)),
    Method("opencv-vng", _opencv_demosaic("_VNG"), tasks=("demosaic",)),
    Method("bm3d", _bm3d, tasks=("denoise",), requires="bm3d"),
)}


def _split_arch(spec: str) -> Tuple[Optional[str], str]:
    """"dagl:model.pt" -> ("dagl", "model.pt") when the prefix is a registered architecture
    or one of its variants ("magn-s-local:run/model_best.safetensors"); otherwise
    (None, spec), so that paths with colons still work."""
    if ":" in spec:
        prefix, rest = spec.split(":", 1)
        from magncli.models.registry import list_archs

        archs = list_archs()
        if prefix.lower() in {*archs, *(v for arch in archs.values() for v in arch.variants)}:
            return prefix.lower(), rest
    return None, spec


def _load_model_method(spec: str, options) -> Method:
    from magncli import load_model   # torch is imported only when a model runs
    arch, path = _split_arch(spec)
    model = load_model(path) if arch is None else load_model(path, arch=arch)
    return model_method(model, options, spec)


def model_method(model, options=None, name: str = "model", level_known: bool = True) -> Method:
    """A Method for a model already in memory (e.g. training's validation of its EMA
    weights), run as `magn restore` runs it: restore_for_task, the task's view of the
    input (a mosaic in GRBG phase) through the inference engine. A model with a level map
    is told the protocol's level, or "unknown" with level_known=False (blind use: `magn
    restore` without --sigma)."""

    def restore(degraded: np.ndarray, degradation: Degradation) -> np.ndarray:
        return restore_for_task(model, degraded, degradation.task, pattern=degradation.pattern,
                                level=degradation.level if level_known else None, options=options)

    return Method(name, restore, device=getattr(options, "device", None) or "auto", model=model)


def blind_twin(method: Method, options=None) -> List[Method]:
    """[the same model run not told the level] for a model with a level map that has a
    blind use (a denoiser grown with "unknown" in its training; not FFDNet), else []."""
    from magncli.models.registry import facts        # torch: loaded only when models run
    stated = facts(method.model) if method.model is not None else None
    if stated is None or not stated.level_input or stated.level_required:
        return []
    return [model_method(method.model, options, f"{method.name} (blind)", level_known=False)]


DEFAULT_MODEL = "default"      # the task's default checkpoint for a set's channels


def default_method(task: Task, channels: int, options=None) -> Method:
    """The checkpoint `magn restore` picks for `task` and `channels`-channel inputs, as a
    row named "default" that records which checkpoint it was."""
    from magncli.weights import resolve_weights
    path = resolve_weights(None, task=task.name, channels=channels, quiet=True)
    method = _load_model_method(str(path), options)
    method.name, method.checkpoint = DEFAULT_MODEL, Path(path).stem
    return method


def make_method(spec: str, task: Task, options=None) -> Method:
    """A baseline by name, or a model by checkpoint spec; MagnError for a wrong-task baseline."""
    baseline = BASELINES.get(spec)
    if baseline is None:
        return _load_model_method(spec, options)
    if task.name not in baseline.tasks:
        raise MagnError(f"baseline {spec} does not do {task.name} (it does: {', '.join(baseline.tasks)})")
    if baseline.requires and importlib.util.find_spec(baseline.requires) is None:
        raise MagnError(f"the {spec} baseline needs the {baseline.requires} package: "
                        f"pip install {baseline.requires}")
    return baseline


def methods_by_channels(task: Task, models: Sequence[str], modes: Sequence[str], options,
                        blind: bool) -> Callable[[str], List[Method]]:
    """The rows' methods for a set scored in `mode` ("gray"/"color"), all loaded now: a
    model spec once, "default" once per channel count of the sets' models."""
    model_channels = lambda mode: task.model_channels(1 if mode == "gray" else 3)  # noqa: E731
    defaults = ({n: default_method(task, n, options) for n in sorted({model_channels(m) for m in modes})}
                if DEFAULT_MODEL in models else {})
    loaded = [None if spec == DEFAULT_MODEL else make_method(spec, task, options) for spec in models]

    def methods_for(mode: str) -> List[Method]:
        methods = [method or defaults[model_channels(mode)] for method in loaded]
        if blind:
            methods = [row for method in methods for row in (method, *blind_twin(method, options))]
        return methods

    return methods_for

