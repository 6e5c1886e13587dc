"""Overlapping tiles: where they lie along an image, and the weights that blend them.

    spans = tile_spans(length, tile, overlap, align)       # [(start, stop), ...] along one axis
    w = blend_weights(th, tw, overlap, y, x, height, width) # (th, tw) weights of the tile at (y, x)

Blending: in every overlap, each tile's weight is 0 on the quarter of the overlap that
touches its own inner edge, rises smoothly (raised cosine) across the middle half, and is
1 beyond. A model whose receptive-field radius is at most overlap/4 therefore gives
exactly the whole-image result (only pixels it computed with full context get weight),
and graph models, whose tiles do differ, get seamless cross-fades.

Geometry only (numpy): the engine (magncli.inference) runs the model on the tiles.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np


def tile_spans(length: int, tile: int, overlap: int, align: int = 1) -> List[Tuple[int, int]]:
    """(start, stop) of tiles covering [0, length): aligned starts, stride about
    tile - overlap, the last tile ending at the edge and 0 to align-1 px shorter than the
    others (its start is rounded up to the alignment), so no pixel outside the image is used."""
    if tile >= length:
        return [(0, length)]
    stride = max(align, (tile - overlap) // align * align)
    last = -(-(length - tile) // align) * align
    starts = list(range(0, last, stride)) + [last]
    return [(s, min(s + tile, length)) for s in starts]


def _edge_ramp(size: int, overlap: int, inner_start: bool, inner_end: bool) -> np.ndarray:
    """1-D weights of one tile: 0 on the outer quarter of an inner overlap, a raised-cosine
    rise over the middle half, 1 elsewhere; image borders keep weight 1."""
    w = np.ones(size, dtype=np.float64)
    dead = overlap // 4
    rise = max(1, overlap - 2 * dead)
    pos = np.arange(size, dtype=np.float64)
    ramp = np.clip((pos - dead + 0.5) / rise, 0.0, 1.0)
    ramp = 0.5 - 0.5 * np.cos(np.pi * ramp)
    if inner_start:
        w = np.minimum(w, ramp)
    if inner_end:
        w = np.minimum(w, ramp[::-1])
    return w


def blend_weights(tile_h: int, tile_w: int, overlap: int, y: int, x: int, height: int, width: int) -> np.ndarray:
    """(tile_h, tile_w) weights for the tile at (y, x) of an (height, width) image."""
    wy = _edge_ramp(tile_h, overlap, y > 0, y + tile_h < height)
    wx = _edge_ramp(tile_w, overlap, x > 0, x + tile_w < width)
    return np.outer(wy, wx).astype(np.float32)
