"""PSNR and SSIM as docs/protocols.md defines them.

Both take two images of the same shape (HxW or HxWxC, gray or RGB), float on
[0, data_range] or uint8/uint16, and prepare them the same way (`prepare_pair`):

1. to float64 on [0, 1];
2. clamp to [0, 1] (`clamp=True`, the protocol for restored outputs);
3. `quantize=True`: round to 8 bits, as the file a user would save (round, never truncate);
4. `to_y=True`: score the BT.601 studio Y of RGB images (gray images are left as they are);
5. `crop`: drop that many pixels at every border.

PSNR uses data range 1; SSIM is Wang et al.'s ssim_index on 0-255 values, mean over
channels. skimage is the tests' oracle only.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

from magncli.errors import MagnError
from magncli.images import to_uint8

# Wang et al. (2004) / MATLAB ssim_index constants.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


# --------------------------------------------------------------------------- BT.601 studio Y

# BT.601 full-range luma weights (sum to 1): MATLAB rgb2gray, how the gray sets are made.
LUMA_BT601 = (0.299, 0.587, 0.114)


def rgb_to_y_studio(rgb: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """BT.601 "studio" luma as MATLAB rgb2ycbcr: Y = 16 + (65.481 R + 128.553 G + 24.966 B)/255
    on 0-255 values. rgb: HxWx3 on [0, data_range]; returns float64 HxW on the same scale
    (16/255..235/255 of data_range). Not OpenCV's gray, which differs by ~0.7 dB on JPEG."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MagnError(f"Y conversion needs an RGB image, got shape {rgb.shape}")
    weighted = 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]
    return (16.0 * data_range + weighted) / 255.0


def rgb_to_y_studio_uint8(rgb: np.ndarray) -> np.ndarray:
    """Rounded 8-bit studio Y (HxW uint8) of uint8 RGB (HxWx3), computed from the exact
    integers: how FBCNN's and DAGL's gray LIVE1 were made."""
    if rgb.dtype != np.uint8:
        raise MagnError(f"8-bit Y conversion needs a uint8 image, got {rgb.dtype}")
    return np.floor(rgb_to_y_studio(rgb, data_range=255.0) + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------- PSNR and SSIM

def _as_unit_float(img: np.ndarray, data_range: float) -> np.ndarray:
    """Any supported image -> float64 HxWxC on [0, 1] (integers by their dtype's range)."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        unit = img / 255.0
    elif img.dtype == np.uint16:
        unit = img / 65535.0
    else:
        unit = img.astype(np.float64) / data_range
    return unit[..., None] if unit.ndim == 2 else unit


def prepare_pair(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, crop: int = 0,
                 to_y: bool = False, quantize: bool = False, clamp: bool = True
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Steps 1-5 of the module docstring; returns two float64 HxWxC arrays on [0, 1]."""
    if np.shape(a) != np.shape(b):
        raise MagnError(f"cannot compare images of shapes {np.shape(a)} and {np.shape(b)}")
    pair = []
    for img in (a, b):
        img = _as_unit_float(img, data_range)
        if clamp or quantize:
            img = np.clip(img, 0.0, 1.0)
        if quantize:
            img = to_uint8(img) / 255.0
        if to_y and img.shape[2] == 3:
            img = rgb_to_y_studio(img)[..., None]
        if crop:
            img = img[crop:-crop, crop:-crop]
        pair.append(img)
    if pair[0].size == 0:
        raise MagnError(f"border crop {crop} leaves nothing of a {np.shape(a)} image")
    return pair[0], pair[1]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, crop: int = 0,
         to_y: bool = False, quantize: bool = False, clamp: bool = True) -> float:
    """PSNR in dB (inf for identical images), after `prepare_pair`."""
    return _psnr_prepared(*prepare_pair(a, b, data_range, crop, to_y, quantize, clamp))


def _psnr_prepared(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def _ssim_channel(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ssim_index of two HxW float64 images on 0-255: Gaussian-weighted statistics,
    only where the 11x11 window fits ("valid")."""
    c1 = (SSIM_K1 * 255) ** 2
    c2 = (SSIM_K2 * 255) ** 2
    kernel = cv2.getGaussianKernel(SSIM_WINDOW, SSIM_SIGMA, cv2.CV_64F)  # normalised, 11x1
    pad = SSIM_WINDOW // 2

    def local_mean(img):  # separable filter, then keep the "valid" part
        filtered = cv2.sepFilter2D(img, cv2.CV_64F, kernel, kernel, borderType=cv2.BORDER_REFLECT)
        return filtered[pad:-pad, pad:-pad]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x ** 2
    var_y = local_mean(y * y) - mu_y ** 2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
                / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    return float(ssim_map.mean())


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, crop: int = 0,
         to_y: bool = False, quantize: bool = False, clamp: bool = True) -> float:
    """SSIM (Wang et al., MATLAB ssim_index) on 0-255 values, mean over channels."""
    return _ssim_prepared(*prepare_pair(a, b, data_range, crop, to_y, quantize, clamp))


def _ssim_prepared(a: np.ndarray, b: np.ndarray) -> float:
    if min(a.shape[:2]) < SSIM_WINDOW:
        raise MagnError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, "
                        f"got {a.shape[1]}x{a.shape[0]} after cropping")
    return float(np.mean([_ssim_channel(a[..., c] * 255.0, b[..., c] * 255.0)
                          for c in range(a.shape[2])]))


def psnr_ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, crop: int = 0,
              to_y: bool = False, quantize: bool = False, clamp: bool = True
              ) -> Tuple[float, float]:
    """(psnr, ssim) with one `prepare_pair`: what eval calls per image."""
    a, b = prepare_pair(a, b, data_range, crop, to_y, quantize, clamp)
    return _psnr_prepared(a, b), _ssim_prepared(a, b)
