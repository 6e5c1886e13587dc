"""The official DAGL/PANet test-time protocols, so that published numbers can be regenerated.

Both networks were evaluated through the EDSR-style wrapper of their repositories, not
on whole images: a recursive quadrant split (`forward_chop`) and, for the "+" numbers, the
x8 flip/rotate self-ensemble (`test_x8` / `forward_x8`). Neither is part of the models
(README facts B5, C3). These are an alternative to the project's own overlapping tiler;
results differ slightly because the seams here are hard (no blending).

    y = forward_chop(model, x, **PROTOCOLS["dagl-gray"])
    y = magncli.ensemble.self_ensemble(lambda t: forward_chop(model, t, **chop_settings(model)), x)

`magn restore/eval --tiling chop [--ensemble]` run exactly this.

Call them under torch.no_grad() for inference, as the official test scripts did.

Sources and assumptions
- forward_chop follows EDSR-PyTorch's `Model.forward_chop` (thstkdgus35/EDSR-PyTorch,
  src/model/__init__.py, the 2018-2019 version DAGL and PANet copied), at scale 1:
  split at h//2, w//2; each quadrant is (h//2 + shave) x (w//2 + shave) and anchored at
  its image corner; if a quadrant's area is below min_size the model runs on it,
  otherwise it is chopped again; each output quadrant keeps only its own h//2 x w//2
  (or remainder) corner. Seams are hard: no averaging of the overlaps.
- DAGL's copy makes tile sides multiples of 4 (its CE heads use stride-4 patches; the
  README: "multiple-of-4 tiles, adaptive shave 24 (gray) or 12 (demosaic), min_size
  10000"). The exact upstream expression was not available to us; we round
  h//2 + shave UP to the next multiple of `multiple` (the shave grows by 0-3 px).
  If upstream used `h_size += 4 - h_size % 4`, its tiles are 4 px larger when
  h//2 + shave is already a multiple of 4; only the context at the seams differs.
- PANet's copy is EDSR's unchanged (multiple=1): shave 10, min_size 6800 (DN_RGB) or
  6400 (CAR, Demosaic) (README fact C3).
- Two guards EDSR lacks, both no-ops on the official test images: a quadrant never
  exceeds the image (EDSR would index from a negative start when h < 2*shave), and a
  split that does not shrink the tile runs the model instead of recursing forever.
- EDSR runs the 4 quadrants as one batch when several GPUs are present; images in a
  batch never interact in DAGL or PANet, so running them one by one is the same.
- The x8 self-ensemble (EDSR's `forward_x8`) is the mean over the 8 dihedral transforms,
  each output transformed back: magncli.ensemble.self_ensemble computes the same mean
  (the order of the 8 terms changes only fp32 rounding). One departure, for Bayer
  mosaics: forward_x8 flipped the mosaic as it was, which DAGL's and PANet's demosaicers,
  trained on flipped mosaics, read in any phase; here each flip is padded back into the
  GRBG pattern, which a model trained on GRBG alone (this project's demosaicer) needs.
  Their "+" demosaicing numbers are therefore not reproduced bit for bit.
"""
from __future__ import annotations

from typing import Callable

import torch

from magncli.models.registry import facts

# Settings of the official test scripts, by model family.
PROTOCOLS = {
    "dagl-gray": {"shave": 24, "min_size": 10000, "multiple": 4},      # DN_Gray, CAR
    "dagl-demosaic": {"shave": 12, "min_size": 10000, "multiple": 4},
    "panet-rgb": {"shave": 10, "min_size": 6800, "multiple": 1},       # DN_RGB
    "panet-car": {"shave": 10, "min_size": 6400, "multiple": 1},
    "panet-demosaic": {"shave": 10, "min_size": 6400, "multiple": 1},
}


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def forward_chop(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                 shave: int = 10, min_size: int = 160000, multiple: int = 4) -> torch.Tensor:
    """EDSR-style recursive quadrant inference at scale 1. x (B, C, H, W) -> (B, C', H, W).

    Equal to model(x) wherever the model's receptive field radius is below the
    effective shave (a pixel's quadrant then holds all of its context); globally
    attending models (DAGL, PANet) differ from whole-image inference by design.
    """
    b, c, h, w = x.shape
    h_half, w_half = h // 2, w // 2
    h_size = min(_round_up(h_half + shave, multiple), h)
    w_size = min(_round_up(w_half + shave, multiple), w)
    tiles = [x[..., 0:h_size, 0:w_size],                 # top-left
             x[..., 0:h_size, w - w_size:w],             # top-right
             x[..., h - h_size:h, 0:w_size],             # bottom-left
             x[..., h - h_size:h, w - w_size:w]]         # bottom-right
    if h_size * w_size < min_size or (h_size == h and w_size == w):
        outs = [model(t) for t in tiles]
    else:
        outs = [forward_chop(model, t, shave, min_size, multiple) for t in tiles]
    out = x.new_empty(b, outs[0].shape[1], h, w)
    # Each quadrant keeps its own corner; rows/cols measured from the tile's far edge.
    out[..., 0:h_half, 0:w_half] = outs[0][..., 0:h_half, 0:w_half]
    out[..., 0:h_half, w_half:w] = outs[1][..., 0:h_half, w_size - w + w_half:w_size]
    out[..., h_half:h, 0:w_half] = outs[2][..., h_size - h + h_half:h_size, 0:w_half]
    out[..., h_half:h, w_half:w] = outs[3][..., h_size - h + h_half:h_size, w_size - w + w_half:w_size]
    return out


def chop_settings(model) -> dict:
    """The official forward_chop settings of a model, as its facts name them (a model
    that states none gets DAGL's gray settings)."""
    return PROTOCOLS[facts(model).chop_protocol]

