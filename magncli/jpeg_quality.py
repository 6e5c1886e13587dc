"""What JPEG quality a file was saved at, read from its quantization tables, and its
chroma subsampling, read from its sampling factors.

`magn restore --task dejpeg` needs the quality of the compression it undoes; a JPEG file
says it, in the tables its encoder scaled from the IJG (JPEG Annex K) base tables:

    quality, exact = estimate_jpeg_quality(image.jpeg_quantization)

exact: the tables are libjpeg's own at that quality (libjpeg, Pillow, OpenCV and most
software); otherwise (a camera's custom tables) the nearest IJG quality.

    subsampling = jpeg_subsampling(image.jpeg_sampling)      # "4:2:0", ... "none" (gray)
"""
from __future__ import annotations

import numpy as np

from magncli.errors import MagnError

# IJG / JPEG Annex K base tables, natural (row-major) order.
_LUMA_BASE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_CHROMA_BASE = np.full(64, 99.0)
_CHROMA_BASE[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 24, 25]] = [17, 18, 24, 47, 18, 21, 26, 66,
                                                                24, 26, 56, 47, 66]


def ijg_scale(quality: int) -> int:
    """libjpeg's table scale in percent at `quality` (1-100): 5000/q below 50, 200 - 2q
    above; the quantization steps, and so the artifacts, grow in proportion to it."""
    return 5000 // quality if quality < 50 else 200 - 2 * quality     # integer, as libjpeg


def ijg_tables(quality: int):
    """The (luma, chroma) quantization tables libjpeg writes at `quality` (baseline)."""
    scale = ijg_scale(quality)
    return tuple(np.clip(np.floor((base * scale + 50) / 100), 1, 255) for base in (_LUMA_BASE, _CHROMA_BASE))


def estimate_jpeg_quality(quantization) -> tuple:
    """(quality, exact) from a JPEG's quantization tables ({0: luma, 1: chroma, ...},
    natural order, as Pillow's `Image.quantization` gives them).

    exact is True when the tables are libjpeg's own tables at that quality (files made
    by libjpeg, Pillow, OpenCV, most software); otherwise the IJG quality whose tables
    are closest (mean absolute log ratio), e.g. for camera JPEGs with custom tables."""
    tables = [np.asarray(quantization[k], np.float64) for k in sorted(quantization)][:2]
    if not tables or any(t.size != 64 for t in tables):
        raise MagnError("JPEG quantization tables are not 8x8; cannot estimate the quality")
    if any(np.min(t) < 1 for t in tables):   # a step of 0 divides by zero: no encoder writes it
        raise MagnError("JPEG quantization tables hold steps of 0 (a damaged or hand-made file); "
                        "cannot estimate the quality: pass quality=Q")
    best, best_err = 50, np.inf
    for q in range(1, 101):
        err = sum(np.abs(np.log(t) - np.log(ref)).mean() for t, ref in zip(tables, ijg_tables(q)))
        if err < best_err:
            best, best_err = q, err
    return best, bool(best_err == 0)


# Luma's (horizontal, vertical) sampling factors over chroma's -> the subsampling's name.
_SUBSAMPLING_NAMES = {(1, 1): "4:4:4", (2, 1): "4:2:2", (2, 2): "4:2:0", (1, 2): "4:4:0", (4, 1): "4:1:1"}
NO_CHROMA = "none"          # a gray JPEG: one component, nothing subsampled


def jpeg_subsampling(sampling) -> str:
    """The chroma subsampling of a JPEG from its components' sampling factors, as its
    SOF header lists them ([(h, v), ...], luma first; Pillow's `Image.layer` holds them):
    "4:4:4", "4:2:2", "4:2:0", "4:4:0" or "4:1:1"; "none" for a gray JPEG; otherwise
    the factors themselves ("2x2,1x1,2x1"), for a file that samples its chroma planes
    differently."""
    factors = [(int(h), int(v)) for h, v in sampling]
    if not factors:
        raise MagnError("JPEG has no components; cannot read its subsampling")
    if len(factors) == 1:
        return NO_CHROMA
    (luma_h, luma_v), chroma = factors[0], set(factors[1:3])
    if len(chroma) == 1:
        chroma_h, chroma_v = chroma.pop()
        if luma_h % chroma_h == 0 and luma_v % chroma_v == 0:
            name = _SUBSAMPLING_NAMES.get((luma_h // chroma_h, luma_v // chroma_v))
            if name is not None:
                return name
    return ",".join(f"{h}x{v}" for h, v in factors)
