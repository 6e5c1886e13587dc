"""The degradations themselves, as array functions: how `magn degrade`, `magn eval` and
training make their inputs (magncli.tasks says which task uses which, with what level).

Everything here follows docs/protocols.md, so that eval tables can
stand beside published ones:

- Gaussian noise: float, unclipped, unrounded, from numpy's frozen legacy stream
  `RandomState(seed)` (a fresh generator per image, seeded with the protocol's seed).
- JPEG: libjpeg through OpenCV, standard IJG tables, 4:2:0 chroma for color (4:4:4 or
  4:2:2 when asked); gray stays one channel.
- Bayer mosaic: a 3-channel image with zeros at unsampled sites, GRBG by default.
  `detect_pattern` reads the pattern off a mosaic when nobody says it (`magn restore`).

Images are numpy arrays, HxW or HxWxC (C = 1 or 3, RGB order), float32 in [0, 1] unless
a function says otherwise. Everything is deterministic and bad parameters raise MagnError.
"""
from __future__ import annotations

import cv2
import numpy as np

from magncli.errors import MagnError
from magncli.images import to_uint8

DEFAULT_SEED = 0
SEED_MAX = 2 ** 32 - 1      # numpy's RandomState takes seeds 0 .. 2**32 - 1 (a ValueError beyond)


def check_seed(seed, name: str = "seed") -> int:
    """`seed` as an int, or a MagnError for what RandomState would refuse with a traceback."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise MagnError(f"{name} must be an integer from 0 to {SEED_MAX}, got {seed!r}")
    return int(seed)
DEFAULT_PATTERN = "grbg"
AUTO_PATTERN = "auto"       # restore: the pattern read off each mosaic (detect_pattern)

# A Bayer pattern names the colours of its 2x2 tile in reading order:
# (0,0), (0,1), (1,0), (1,1). "grbg" = G R / B G.
BAYER_PATTERNS = ("grbg", "rggb", "gbrg", "bggr")
_CHANNEL_INDEX = {"r": 0, "g": 1, "b": 2}


# --------------------------------------------------------------------------- Gaussian noise

def check_sigma(sigma: float) -> None:
    if not np.isfinite(sigma) or sigma < 0:
        raise MagnError(f"noise sigma must be a number >= 0 (on the 0-255 scale), got {sigma:g}")


def add_gaussian_noise(img: np.ndarray, sigma: float, seed: int = DEFAULT_SEED) -> np.ndarray:
    """img (float [0, 1], any shape) + N(0, sigma/255), as float32 with no clipping and no
    rounding. The noise comes from a fresh `np.random.RandomState(seed)`, whose stream numpy
    keeps frozen, so a seed gives the same noisy image on every numpy version."""
    check_sigma(sigma)
    noise = np.random.RandomState(seed).standard_normal(img.shape) * (sigma / 255.0)  # float64
    return (img.astype(np.float64) + noise).astype(np.float32)


def gaussian_noise_torch(x, sigma_per_image, generator=None):
    """Training-time noise on a torch batch x (B, C, H, W) in [0, 1]: x + N(0, sigma/255),
    one sigma per image (a float or a (B,) tensor on the 0-255 scale), unclipped.

    Not the eval stream: torch's generator may change between versions and devices, so
    benchmark inputs always come from `add_gaussian_noise`."""
    import torch

    sigma = torch.as_tensor(sigma_per_image, dtype=x.dtype, device=x.device)
    if bool((sigma < 0).any()):
        raise MagnError("noise sigma must be >= 0 (on the 0-255 scale)")
    sigma = sigma.reshape(-1, 1, 1, 1) if sigma.ndim else sigma
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + noise * (sigma / 255.0)


# --------------------------------------------------------------------------- JPEG

def check_quality(quality: int) -> None:
    if not np.isfinite(quality) or int(quality) != quality or not 1 <= quality <= 100:   # int(nan) raises
        raise MagnError(f"JPEG quality must be an integer from 1 to 100, got {quality:g}")


# The chroma subsamplings a protocol may ask for, by name, and OpenCV's flag for each.
# 4:2:0 is the protocol's (and libjpeg's default for color).
DEFAULT_SUBSAMPLING = "4:2:0"
JPEG_SUBSAMPLINGS = {"4:4:4": "IMWRITE_JPEG_SAMPLING_FACTOR_444", "4:2:2": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
                     "4:2:0": "IMWRITE_JPEG_SAMPLING_FACTOR_420"}


def check_subsampling(subsampling: str) -> str:
    """The subsampling's name ("4:4:4"), also from its short form ("444"); MagnError otherwise."""
    name = str(subsampling).strip()
    if name.isdigit() and len(name) == 3:
        name = ":".join(name)
    if name not in JPEG_SUBSAMPLINGS:
        raise MagnError(f"unknown chroma subsampling {subsampling!r}; known: "
                        f"{', '.join(n.replace(':', '') for n in JPEG_SUBSAMPLINGS)}")
    return name


def jpeg_compress(img: np.ndarray, quality: int, subsampling: str = DEFAULT_SUBSAMPLING) -> np.ndarray:
    """Encode and decode with libjpeg (OpenCV) at `quality`; returns uint8 of img's shape.

    img: uint8 HxW, HxWx1 (gray, encoded as a one-channel JPEG) or HxWx3 RGB (encoded
    YCbCr at `subsampling`, 4:2:0 unless asked, standard IJG tables). Float input in
    [0, 1] is first rounded to uint8, because JPEG only stores 8-bit samples."""
    decoded = cv2.imdecode(np.frombuffer(jpeg_encode(img, quality, subsampling), np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded.ndim == 3:                                  # HxW (gray) or HxWx3 BGR
        decoded = decoded[..., ::-1]
    return np.ascontiguousarray(decoded).reshape(img.shape)


def jpeg_encode(img: np.ndarray, quality: int, subsampling: str = DEFAULT_SUBSAMPLING) -> bytes:
    """The JPEG file jpeg_compress decodes: libjpeg at `quality`, `subsampling` for color."""
    check_quality(quality)
    subsampling = check_subsampling(subsampling)
    pixels = to_uint8(img)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        pixels = pixels[..., ::-1]  # OpenCV encodes BGR
    elif pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    elif pixels.ndim != 2:
        raise MagnError(f"JPEG needs a gray or RGB image, got shape {img.shape}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    # 4:2:0 is OpenCV's default too, but we say so: the protocol depends on it.
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, getattr(cv2, JPEG_SUBSAMPLINGS[subsampling])]
    elif subsampling != DEFAULT_SUBSAMPLING:
        raise MagnError(f"this OpenCV ({cv2.__version__}) cannot choose the chroma subsampling; "
                        f"it writes {DEFAULT_SUBSAMPLING} only")
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(pixels), params)
    if not ok:
        raise MagnError("OpenCV could not encode the image as JPEG")
    return encoded.tobytes()


# --------------------------------------------------------------------------- Bayer mosaic

def check_pattern(pattern: str) -> str:
    name = str(pattern).lower()
    if name not in BAYER_PATTERNS:
        raise MagnError(f"unknown Bayer pattern {pattern!r}; known: {', '.join(BAYER_PATTERNS)}")
    return name


def bayer_masks(h: int, w: int, pattern: str = DEFAULT_PATTERN) -> np.ndarray:
    """Boolean HxWx3 array: True where the sensor samples that channel. The 2x2 tile is
    anchored at (0, 0); odd sizes simply cut the last tile."""
    pattern = check_pattern(pattern)
    masks = np.zeros((h, w, 3), dtype=bool)
    for (row, col), colour in zip(((0, 0), (0, 1), (1, 0), (1, 1)), pattern):
        masks[row::2, col::2, _CHANNEL_INDEX[colour]] = True
    return masks


def bayer_mosaic(rgb: np.ndarray, pattern: str = DEFAULT_PATTERN) -> np.ndarray:
    """HxWx3 RGB -> HxWx3 zero-filled mosaic (the input of IRCNN, RNAN, PANet, DAGL)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MagnError(f"demosaicing needs an RGB image, got shape {rgb.shape}")
    return rgb * bayer_masks(rgb.shape[0], rgb.shape[1], pattern).astype(rgb.dtype)


def cfa_to_mosaic(cfa: np.ndarray, pattern: str = DEFAULT_PATTERN) -> np.ndarray:
    """A one-channel sensor image (HxW or HxWx1, as a raw CFA file holds) -> the zero-filled
    HxWx3 mosaic that models take."""
    if cfa.ndim == 3 and cfa.shape[2] == 1:
        cfa = cfa[..., 0]
    if cfa.ndim != 2:
        raise MagnError(f"a CFA image has one channel, got shape {cfa.shape}")
    return cfa[..., None] * bayer_masks(cfa.shape[0], cfa.shape[1], pattern).astype(cfa.dtype)


def pattern_shift(pattern: str, target: str = DEFAULT_PATTERN) -> tuple:
    """(dy, dx) such that padding a `pattern` mosaic by dy rows on top and dx columns on
    the left gives a `target` mosaic: every Bayer pattern is a one-pixel shift of any
    other, so one model trained on GRBG serves all four."""
    pattern, target = check_pattern(pattern), check_pattern(target)
    grid = lambda p: [[p[0], p[1]], [p[2], p[3]]]  # noqa: E731
    src, dst = grid(pattern), grid(target)
    for dy in (0, 1):
        for dx in (0, 1):
            if all(src[(y - dy) % 2][(x - dx) % 2] == dst[y][x] for y in (0, 1) for x in (0, 1)):
                return dy, dx
    raise AssertionError("unreachable: the four Bayer patterns are shifts of one another")


def align_mosaic(mosaic: np.ndarray, pattern: str, target: str = DEFAULT_PATTERN):
    """Pad an HxWx3 `pattern` mosaic into a `target` one; returns (aligned, (dy, dx)).
    Reflection (x -> -x) keeps each pixel's parity, hence its colour site; crop the
    restored result with [dy:, dx:]."""
    dy, dx = pattern_shift(pattern, target)
    if dy or dx:
        mode = "reflect" if min(mosaic.shape[:2]) > 1 else "edge"
        mosaic = np.pad(mosaic, ((dy, 0), (dx, 0), (0, 0)), mode=mode)
    return mosaic, (dy, dx)


def mosaic_to_cfa(mosaic: np.ndarray) -> np.ndarray:
    """Zero-filled HxWx3 mosaic -> HxW one-channel CFA (each site holds one non-zero channel)."""
    return mosaic.sum(axis=2, dtype=mosaic.dtype)


# --------------------------------------------------------------------------- which Bayer pattern
# A one-channel CFA: the green sites are the diagonal whose neighbours are most alike;
# their mean |difference| must be at most this fraction of the other diagonal's (measured
# on Kodak24 and McMaster: 0.64 at most, 0.26 typical).
GREEN_LIKENESS_MAX = 0.8
# Red against blue has no such structure (swapping them leaves every smoothness statistic
# unchanged): photographs are on average redder than blue, and the difference of the two
# sites' means must be at least this fraction of their mean |difference| to be believed.
RED_EXCESS_MIN = 0.3


def detect_pattern(mosaic: np.ndarray) -> str:
    """The Bayer pattern of a mosaic, read off the mosaic itself: a zero-filled HxWx3
    mosaic shows it in where its zeros are; a one-channel CFA (HxW or HxWx1) by its
    statistics. MagnError ("cannot tell the Bayer pattern ...; pass pattern=") when
    the answer is not clear."""
    if mosaic.ndim == 3 and mosaic.shape[2] == 3:
        return _pattern_of_zero_filled(mosaic)
    if mosaic.ndim == 3 and mosaic.shape[2] == 1:
        mosaic = mosaic[..., 0]
    if mosaic.ndim != 2:
        raise MagnError(f"a Bayer mosaic has 1 or 3 channels, got shape {mosaic.shape}")
    return _pattern_of_cfa(mosaic)


def _cannot_tell(why: str) -> MagnError:
    return MagnError(f"cannot tell the Bayer pattern of this mosaic: {why}; pass pattern=")


def _pattern_of_zero_filled(mosaic: np.ndarray) -> str:
    """The one pattern whose unsampled sites are zero in every channel."""
    sampled = mosaic != 0
    fits = [p for p in BAYER_PATTERNS if not (sampled & ~bayer_masks(*mosaic.shape[:2], p)).any()]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise _cannot_tell("it is not zero-filled as a 3-channel mosaic of any of "
                           f"{', '.join(BAYER_PATTERNS)}")
    raise _cannot_tell(f"its zeros fit {', '.join(fits)} alike")


def _pattern_of_cfa(cfa: np.ndarray) -> str:
    """Green on the diagonal whose sites are most alike, then red on the brighter of the
    other two sites on average (a margin rule for each, else MagnError)."""
    h, w = cfa.shape[0] // 2 * 2, cfa.shape[1] // 2 * 2
    if h < 2 or w < 2:
        raise _cannot_tell(f"{cfa.shape[1]}x{cfa.shape[0]} holds no whole 2x2 Bayer tile")
    x = cfa[:h, :w].astype(np.float64)
    s00, s01, s10, s11 = x[0::2, 0::2], x[0::2, 1::2], x[1::2, 0::2], x[1::2, 1::2]
    main, anti = np.abs(s00 - s11).mean(), np.abs(s01 - s10).mean()    # each site against its diagonal one
    if not min(main, anti) <= GREEN_LIKENESS_MAX * max(main, anti) or max(main, anti) == 0:
        raise _cannot_tell("neither diagonal of its 2x2 tiles is alike enough to be the green sites")
    green_on_main = main < anti
    first, second = (s01, s10) if green_on_main else (s00, s11)        # the red and blue sites
    excess, spread = (first - second).mean(), np.abs(first - second).mean()
    if abs(excess) < RED_EXCESS_MIN * spread:
        raise _cannot_tell("its red and blue sites are too alike on average to tell apart")
    red_first = excess > 0
    if green_on_main:
        return "grbg" if red_first else "gbrg"
    return "rggb" if red_first else "bggr"
