"""The inference engine: device, precision, overlapping tiles, self-ensemble.

One code path for `restore`, `eval` and training validation:

    plan = plan_tiles(model, options, period=2)      # once: what the model's facts and the options settle
    restored = restore_planned(model, image, plan)   # image (H, W, C) float32 on the CPU

    image -> tiles (tile x tile, overlapping) -> device -> model [x8 ensemble] -> CPU
      -> weighted blend into an (H, W, C) accumulator -> restored image

A TilePlan holds everything the run needs from the model's facts and the options:
device, dtype, tile and overlap, the step tile origins snap to, tiles per pass, the
ensemble and the input's hook for it. The engine reads the plan, never the facts again.
restore_array and restore_tensor build one for a caller that has options only.

Only tiles travel to the device; the whole image and the accumulators stay on the CPU,
so peak memory is bounded by the tile, not the image. Where tiles lie and how they are
blended: magncli.tiling; the x8 self-ensemble: magncli.ensemble.

Progress: restore_tensor/restore_array take an optional `progress(done, total)`, called
with (0, total) before the first pass, then after each pass of a batch of tiles through
the model (from the tile workers' threads on the CPU, one call at a time), counting tile passes (a tile is one pass, eight with the x8 ensemble;
`--tiling chop` counts the whole image as one).
An OOM retry with a smaller tile starts counting again from 0 with its own total.

Threads: on the CPU, one image's batches of tiles run side by side, one per torch
thread, each at one thread (tile_workers). Several threads may also restore images with
one model at once (`restore --jobs`, each image then gets its share of the threads):
the model is only read while it runs; moving it to the device and setting its backend
happen under a lock, and only when something changes.
"""
from __future__ import annotations

import logging
import math
import threading
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from magncli.attention import compiled_chunks, default_backend
from magncli.devices import resolve_device, resolve_precision
from magncli.engine_defaults import ENGINE
from magncli.ensemble import EnsembleInput, self_ensemble
from magncli.errors import MagnError
from magncli.models.registry import ModelFacts, facts
from magncli.parallel import Stopped, in_order
from magncli.tiling import blend_weights, tile_spans

log = logging.getLogger("magn")

CPU_TILE = 64           # the training patch size: graph statistics match training
CPU_OVERLAP = ENGINE.overlap
# A local model's CPU tile (a plain CNN states its reach, ModelFacts.context): its overlap
# must be 4x its reach for exact blending (80 px for DnCNN-B), which costs little here.
LOCAL_MODEL_TILE = 512
MIN_TILE = 16
MAX_AUTO_TILE = 256
# Four 64 px tiles per forward pass keep both cores busy: 1.9x the throughput of one
# for magn-s-local in bf16, 1.4x for magn-s (benchmarks/bench_inference.py --tile-batch).
CPU_TILE_BATCH = 4
COMPILE_MIN_PASSES = 8     # compiling (~20 s once) pays off after about this many CPU tiles

ProgressCallback = Callable[[int, int], None]     # progress(tile passes done, total)


@dataclass
class InferenceOptions:
    device: str = ENGINE.device           # auto | cpu | cuda | cuda:N | mps
    precision: Optional[str] = ENGINE.precision  # fp32 | bf16 | fp16 (bf16 on CUDA or a native-bf16 CPU); None: fp32
    tile: Optional[int] = ENGINE.tile     # None: automatic (CUDA: from free memory; else CPU_TILE)
    overlap: int = ENGINE.overlap
    ensemble: bool = ENGINE.ensemble      # x8 flip/rotate self-ensemble
    tile_batch: Optional[int] = None  # tiles per forward pass; None: CPU_TILE_BATCH on the CPU, 1 elsewhere
    tiling: str = ENGINE.tiling           # blend (this engine's tiler) | chop (DAGL/PANet's official protocol)
    compile: Optional[bool] = ENGINE.compile  # torch.compile the chunked attention; None: on CPU for >= 8 tile passes
    backend: Optional[str] = None  # graph-attention backend; None = per device

    def resolve(self) -> Tuple[torch.device, torch.dtype]:
        """The device and autocast dtype these options run on ("auto" made a device);
        MagnError for any setting that cannot work, so that callers can refuse bad
        options before touching any file."""
        device = resolve_device(self.device)
        dtype = resolve_precision(self.precision or "fp32", device)
        if self.overlap < 0:
            raise MagnError(f"overlap={self.overlap} must be >= 0")
        if self.tile is not None and (self.tile < 4 or self.tile % 4):
            raise MagnError(f"tile={self.tile} must be a positive multiple of 4")
        if self.tile is not None and self.tiling == "blend" and self.overlap > self.tile // 2:
            # Refused rather than silently clamped: the tiles would not overlap as asked.
            raise MagnError(f"overlap={self.overlap} is more than half of tile={self.tile} "
                            f"(at most {self.tile // 2}: set a smaller overlap= or a larger tile=)")
        if self.tiling not in ("blend", "chop"):
            raise MagnError(f"unknown tiling {self.tiling!r} (use blend or chop)")
        return device, dtype

    def describe(self, model: Optional[nn.Module] = None) -> dict:
        """The settings as results should record them: the tile and overlap actually used
        for `model` on the CPU rather than None; "auto" where CUDA picks it from free memory."""
        d = asdict(self)
        d["precision"] = self.precision or "fp32"
        device = resolve_device(self.device)
        if self.tile is None and device.type == "cuda":
            d["tile"] = "auto"
        elif model is not None:
            d["tile"], d["overlap"] = tile_and_overlap(facts(model), self, device)
        elif d["tile"] is None:
            d["tile"] = CPU_TILE
        if d["tiling"] == "chop":
            d["tile"], d["overlap"] = "chop", None
        return d


# --------------------------------------------------------------------------- tiles
def auto_tile(stated: ModelFacts, device: torch.device) -> int:
    """The CPU's tile (CPU_TILE, or LOCAL_MODEL_TILE for a model that states its reach);
    on CUDA the largest tile (multiple of 4, at most MAX_AUTO_TILE) fitting in free memory.

    The chunked/flex attention keeps memory roughly linear in the tile's pixel count;
    the estimate assumes ~24 KiB of activations per pixel (64-channel fp32 features with
    the graph blocks' temporaries), halved again on OOM by the caller.
    """
    if device.type != "cuda":
        return LOCAL_MODEL_TILE if stated.context else CPU_TILE
    free, _ = torch.cuda.mem_get_info(device)
    pixels = free * 0.5 / (24 * 1024)
    side = int(math.sqrt(pixels)) // 4 * 4
    return max(MIN_TILE, min(MAX_AUTO_TILE, side))


def tile_and_overlap(stated: ModelFacts, options: InferenceOptions, device: torch.device) -> Tuple[int, int]:
    """(tile, overlap) for a model of these facts: the options' tile, or the device's
    (auto_tile); the options' overlap, raised to what a local model's reach needs for
    exact blending (the blend drops the outer quarter of each overlap) and at most half
    the tile."""
    tile = options.tile or auto_tile(stated, device)
    needed = -(-4 * stated.context // 4) * 4
    return tile, min(max(options.overlap, needed), tile // 2)


# --------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class TilePlan:
    """How the engine runs one model on one kind of input, settled once by plan_tiles
    from the model's facts and the options; the engine reads this, never the facts."""

    facts: ModelFacts            # what the model states: its channels, level map, attention, chop protocol
    device: torch.device
    dtype: torch.dtype           # autocast dtype (float32: none)
    tiling: str                  # blend (tiles, blended) | chop (the official recursive quadrants)
    tile: int                    # the tile's side: the options', or the device's (auto_tile)
    overlap: int                 # between tiles: the options', or more where the model's reach needs it
    align: int                   # tile origins snap to multiples of this: the model's grid and the input's period
    tile_batch: int              # tiles per forward pass
    cpu_tile_batch: int          # tiles per pass after a fall back to the CPU
    ensemble: bool               # x8 flip/rotate self-ensemble
    ensemble_input: Optional[EnsembleInput] = None   # how the model takes each flip (a mosaic's phase)
    backend: Optional[str] = None                     # graph-attention backend; None: per device
    compile: Optional[bool] = None                    # the options'; None: by the image's tile passes (compiles)
    chunked: bool = False        # the backend is the "chunked" one, the only one that compiles

    @property
    def passes_per_tile(self) -> int:
        return 8 if self.ensemble else 1

    def passes(self, height: int, width: int) -> int:
        """Tile passes through the model for an (height, width) image."""
        return (len(tile_spans(height, self.tile, self.overlap, self.align))
                * len(tile_spans(width, self.tile, self.overlap, self.align)) * self.passes_per_tile)

    def compiles(self, height: int, width: int) -> bool:
        """Whether to torch.compile the chunked attention for an (height, width) image: as
        the options say, else on the CPU once there are enough tile passes to pay for it."""
        if self.compile is not None:
            return self.compile
        return self.device.type == "cpu" and self.chunked and self.passes(height, width) >= COMPILE_MIN_PASSES

    def halved(self) -> Optional["TilePlan"]:
        """The plan with half the tile (a multiple of 4), for a CUDA OOM retry; None below MIN_TILE."""
        if self.tile // 2 < MIN_TILE:
            return None
        tile = self.tile // 2 // 4 * 4
        return replace(self, tile=tile, overlap=min(self.overlap, tile // 2))

    def on_cpu(self) -> "TilePlan":
        """The plan on the CPU in fp32, for when even the smallest tile does not fit the
        device (flex attention, CUDA's backend, becomes the CPU's default)."""
        return replace(self, device=torch.device("cpu"), dtype=torch.float32, tile_batch=self.cpu_tile_batch,
                       backend=self.backend if self.backend != "flex" else None)


def plan_tiles(model: nn.Module, options: Optional[InferenceOptions] = None, period: int = 1,
               ensemble_input: Optional[EnsembleInput] = None) -> TilePlan:
    """The TilePlan of `model` under `options`, from the facts it states (the one time the
    engine asks for them). period: the input's period, which tile origins keep (2 for a
    Bayer mosaic: every tile then starts on the same colour phase); ensemble_input: how
    the model takes each flip of the ensemble (a task's hook, see magncli.ensemble).
    MagnError for options that cannot work, or that the model cannot run under."""
    options = options or InferenceOptions()
    stated = facts(model)
    device, dtype = options.resolve()
    if dtype != torch.float32 and not stated.half_precision:
        raise MagnError(f"{getattr(model, 'arch', type(model).__name__)} runs in fp32 only "
                        f"(precision={options.precision or 'fp32'} asked for)")
    tile, overlap = tile_and_overlap(stated, options, device)
    return TilePlan(
        facts=stated, device=device, dtype=dtype, tiling=options.tiling, tile=tile, overlap=overlap,
        # The model's own grid (its size_multiple, e.g. 4 for MAGN's stride-4 patch graph, 8
        # for a half-resolution trunk) and the input's period: every tile then sees what the
        # whole image shows there.
        align=math.lcm(stated.size_multiple, int(period)),
        tile_batch=options.tile_batch or (CPU_TILE_BATCH if device.type == "cpu" else 1),
        cpu_tile_batch=options.tile_batch or CPU_TILE_BATCH, ensemble=options.ensemble,
        ensemble_input=ensemble_input, backend=options.backend, compile=options.compile,
        # Only the "chunked" backend compiles; the CPU default ("sdpa") is fused already.
        chunked=(options.backend or default_backend(device)) == "chunked")


# --------------------------------------------------------------------------- engine
class _DeviceOOM(Exception):
    pass


# A restorer returns an image, whose values stay near [0, 1] before the final clip. Far
# outside it (or not finite) the network has broken down on the input: half precision
# overflowed, or one outlier feature took over the graph attention of the whole tile
# (docs/lab-notebook.md, "Breakdowns"), and a clip would hide a ruined image.
BREAKDOWN_MARGIN = 1.0


def broken_down(lo: float, hi: float) -> bool:
    """Whether a model output whose values span [lo, hi] is a breakdown (NaN is one)."""
    return not (-BREAKDOWN_MARGIN <= lo and hi <= 1.0 + BREAKDOWN_MARGIN)


def _forward(model: Callable[[Tensor], Tensor], x: Tensor, plan: TilePlan,
             on_pass: Optional[Callable[[int], None]] = None) -> Tensor:
    """One batch of tiles, run on the plan's device, returned as fp32 on the CPU; on_pass(n)
    after each pass of the n tiles through the model (8 with the ensemble)."""
    device, dtype = plan.device, plan.dtype
    # channels_last on the CPU: oneDNN's convolutions run 1.2-1.4x faster in it in fp32
    # and more in bf16 (benchmarks/bench_inference.py); the model is converted to match.
    x = x.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.preserve_format)

    def run(t: Tensor) -> Tensor:
        if dtype == torch.float32:
            y = model(t).float()
        else:
            with torch.autocast(device_type=device.type, dtype=dtype):
                y = model(t).float()
        if on_pass is not None:
            on_pass(t.shape[0])
        return y

    with torch.inference_mode():
        y = self_ensemble(run, x, plan.ensemble_input) if plan.ensemble else run(x)
        if dtype != torch.float32 and broken_down(float(y.amin()), float(y.amax())):
            # Half precision overflowed, or lost the network, somewhere in this tile: redo it exactly.
            log.warning("values far outside 0-1 in %s; tile redone in fp32", dtype)
            y = (self_ensemble(lambda t: model(t).float(), x, plan.ensemble_input) if plan.ensemble
                 else model(x).float())
    return y.cpu()


def _pass_counter(progress: Optional[ProgressCallback], total: int) -> Optional[Callable[[int], None]]:
    """on_pass(n) for _forward: adds n tile passes and reports (done, total) to `progress`,
    which hears (0, total) first, before any pass."""
    if progress is None:
        return None
    done = 0
    lock = threading.Lock()           # tile workers report from their own threads
    progress(0, total)

    def on_pass(n: int) -> None:
        nonlocal done
        with lock:
            done = min(total, done + n)
            progress(done, total)
    return on_pass


def _restore_tiled(model: nn.Module, image: Tensor, plan: TilePlan,
                   progress: Optional[ProgressCallback] = None) -> Tensor:
    """image (1, C, H, W) fp32 on the CPU -> restored (1, C', H, W) fp32 on the CPU (C' = C
    less a level map)."""
    _, c, h, w = image.shape
    # A batch holds tiles of one shape: edge tiles may be a few pixels shorter.
    by_shape: Dict[Tuple[int, int], list] = {}
    for ys in tile_spans(h, plan.tile, plan.overlap, plan.align):
        for xs in tile_spans(w, plan.tile, plan.overlap, plan.align):
            by_shape.setdefault((ys[1] - ys[0], xs[1] - xs[0]), []).append((ys, xs))
    n_tiles = sum(map(len, by_shape.values()))
    workers = tile_workers(plan, n_tiles)
    # Enough batches for every worker: a batch's make-up does not change its outputs.
    per_batch = min(plan.tile_batch, math.ceil(n_tiles / workers))
    batches = [group[i:i + per_batch] for group in by_shape.values()
               for i in range(0, len(group), per_batch)]
    on_pass = _pass_counter(progress, n_tiles * plan.passes_per_tile)
    stop = threading.Event()          # set when the image is given up: workers end at their next pass

    def after_pass(n: int) -> None:
        if stop.is_set():
            raise Stopped()
        if on_pass is not None:
            on_pass(n)

    def run(batch) -> Tensor:
        inputs = torch.cat([image[..., a:b, p:q] for (a, b), (p, q) in batch])     # (n, C, th, tw)
        try:
            return _forward(model, inputs, plan, after_pass)                  # (n, C', th, tw)
        except torch.cuda.OutOfMemoryError:
            raise _DeviceOOM() from None

    c_out = c - plan.facts.level_input                     # a level map goes in, not out
    acc = torch.zeros(1, c_out, h, w)
    weight_sum = torch.zeros(1, 1, h, w)
    with closing(in_order(run, batches, workers, stop)) as results:
        for batch, out in results:
            for ((a, b), (p, q)), out_tile in zip(batch, out):
                wgt = torch.from_numpy(blend_weights(b - a, q - p, plan.overlap, a, p, h, w))
                acc[0, :, a:b, p:q] += out_tile * wgt
                weight_sum[0, 0, a:b, p:q] += wgt
    return acc / weight_sum


# Each tile worker holds one batch's activations (4 tiles of 512 px through magn-s-local
# in bf16: about 240 MiB): a bound on what a many-core machine adds to the peak.
MAX_TILE_WORKERS = 8


def tile_workers(plan: TilePlan, n_tiles: int) -> int:
    """How many threads run batches of tiles at once (parallel.in_order): on the CPU one
    per torch thread, at most MAX_TILE_WORKERS and one per tile; elsewhere 1. Two
    batches side by side use two cores fully, where one batch on two intra-op threads
    waits at every operator (docs/lab-notebook.md, "Tiles side by side"); outputs are
    bit-identical, a model's output depending on neither the threads nor the batch."""
    if plan.device.type != "cpu" or plan.tiling != "blend":
        return 1
    return max(1, min(torch.get_num_threads(), MAX_TILE_WORKERS, n_tiles))


def _restore_chopped(model: nn.Module, image: Tensor, plan: TilePlan,
                     progress: Optional[ProgressCallback] = None) -> Tensor:
    """The official DAGL/PANet protocol: recursive quadrants with hard seams, the whole
    image on the device (as their test scripts did), optional x8 ensemble."""
    from magncli.official_protocols import PROTOCOLS, forward_chop
    settings = PROTOCOLS[plan.facts.chop_protocol]
    return _forward(lambda t: forward_chop(model, t, **settings), image, plan,
                    _pass_counter(progress, plan.passes_per_tile))


def restore_tensor(model: nn.Module, image: Tensor, options: Optional[InferenceOptions] = None,
                   progress: Optional[ProgressCallback] = None, align: int = 1) -> Tensor:
    """Restore (1, C, H, W) fp32 CPU tensor with `model`; returns the same shape, unclipped.

    On CUDA out-of-memory the tile is halved and retried; below MIN_TILE the work falls
    back to the CPU with a warning. `progress(done, total)`: see the module docstring.
    align: the input's period, which tile origins keep (2 for a Bayer mosaic; see
    plan_tiles)."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError("restore_tensor expects one image of shape (1, C, H, W)")
    return restore_planned_tensor(model, image, plan_tiles(model, options, align), progress)


def restore_planned_tensor(model: nn.Module, image: Tensor, plan: TilePlan,
                           progress: Optional[ProgressCallback] = None) -> Tensor:
    """restore_tensor as `plan` says: (1, C, H, W) fp32 on the CPU -> (1, C', H, W)."""
    _prepare(model, plan)
    if plan.tiling == "chop":
        return _restore_chopped(model, image, plan, progress)
    with compiled_chunks(plan.compiles(*image.shape[-2:])):
        return _restore_with_retries(model, image, plan, progress)


_PREPARE_LOCK = threading.Lock()


def _prepare(model: nn.Module, plan: TilePlan) -> None:
    """The model in eval mode on the plan's device (channels_last on the CPU) with its
    attention backend set. Under a lock, and the weights moved only when they are not in
    place already, so that threads running the model at once never see it change."""
    fmt = torch.channels_last if plan.device.type == "cpu" else torch.preserve_format
    with _PREPARE_LOCK:
        if plan.facts.graph_attention:
            model.set_attention_backend(plan.backend)
        if any(m.training for m in model.modules()) or not _in_place(model, plan.device, fmt):
            model.eval().to(plan.device, memory_format=fmt)


def _in_place(model: nn.Module, device: torch.device, fmt: torch.memory_format) -> bool:
    for t in (*model.parameters(), *model.buffers()):
        if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
            return False
        if fmt == torch.channels_last and t.dim() == 4 and not t.is_contiguous(memory_format=fmt):
            return False
    return True


def _restore_with_retries(model: nn.Module, image: Tensor, plan: TilePlan,
                          progress: Optional[ProgressCallback] = None) -> Tensor:
    """The tiled pass; on CUDA OOM halve the tile, then fall back to the CPU."""
    while True:
        try:
            return _restore_tiled(model, image, plan, progress)
        except _DeviceOOM:
            torch.cuda.empty_cache()
            smaller = plan.halved()
            if smaller is not None:
                plan = smaller
                log.warning("CUDA out of memory; retrying with tile %d", plan.tile)
                continue
            log.warning("CUDA out of memory even at tile %d; falling back to the CPU", plan.tile)
            plan = plan.on_cpu()
            _prepare(model, plan)
            return _restore_tiled(model, image, plan, progress)


def restore_array(model: nn.Module, image: np.ndarray, options: Optional[InferenceOptions] = None,
                  progress: Optional[ProgressCallback] = None, align: int = 1) -> np.ndarray:
    """Restore an (H, W, C) or (H, W) float image in about [0, 1]; returns float32, same
    shape (the image's channels only, for a model with a level map), unclipped.
    `progress(done, total)` after each batch of tile passes; `align`: the input's period
    (see restore_tensor)."""
    return restore_planned(model, image, plan_tiles(model, options, align), progress)


def restore_planned(model: nn.Module, image: np.ndarray, plan: TilePlan,
                    progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """restore_array as `plan` says: (H, W, C) or (H, W) float32 -> float32 of the same
    height and width, unclipped."""
    arr = np.asarray(image, dtype=np.float32)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise MagnError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    stated = plan.facts
    if stated.in_channels is not None and arr.shape[-1] != stated.in_channels + stated.level_input:
        level = " and a level map" if stated.level_input else ""
        raise MagnError(f"the model expects {stated.in_channels}-channel images{level}, "
                        f"got {arr.shape[-1]} channels")
    x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None]   # (1, C, H, W)
    y = restore_planned_tensor(model, x, plan, progress)[0].numpy().transpose(1, 2, 0)   # (H, W, C)
    return y[..., 0] if squeeze else np.ascontiguousarray(y)
