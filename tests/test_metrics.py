"""PSNR/SSIM against hand computations and the skimage oracle (docs/protocols.md)."""
import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from magncli.datasets import load_image
from magncli.degrade import add_gaussian_noise, jpeg_compress
from magncli.errors import MagnError
from magncli.metrics import psnr, psnr_ssim, rgb_to_y_studio, ssim


def _skimage_ssim(a, b, channel_axis=None):
    return structural_similarity(a * 255.0, b * 255.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=255,
                                 channel_axis=channel_axis)


def test_psnr_matches_a_hand_computed_value():
    a = np.zeros((4, 4), np.float32)
    b = a.copy()
    b[0, 0] = 0.5  # mse = 0.25 / 16
    assert psnr(a, b) == pytest.approx(10 * math.log10(64.0), abs=1e-12)
    # uint8 is read on its own 0-255 range; data_range scales floats.
    assert psnr(np.zeros((4, 4), np.uint8), np.full((4, 4), 255, np.uint8)) == pytest.approx(0.0)
    assert psnr(a * 255, b * 255, data_range=255.0) == pytest.approx(psnr(a, b))
    assert psnr(a, a) == float("inf")


def test_outputs_are_clamped_unless_asked_not_to():
    truth = np.full((8, 8), 1.0)
    output = np.full((8, 8), 1.2)
    assert psnr(output, truth) == float("inf")
    assert psnr(output, truth, clamp=False) == pytest.approx(10 * math.log10(1 / 0.04))


def test_crop_drops_the_border():
    a = np.zeros((10, 10))
    b = a.copy()
    b[0, :] = 1.0  # only the border differs
    assert psnr(a, b, crop=1) == float("inf")
    assert math.isfinite(psnr(a, b))


def test_quantize_rounds_and_never_truncates():
    truth = np.full((16, 16), 101 / 255)
    output = np.full((16, 16), 100.6 / 255)  # rounds to 101, truncates to 100
    assert psnr(output, truth, quantize=True) == float("inf")
    truncated = np.floor(output * 255) / 255
    assert psnr(truncated, truth) == pytest.approx(20 * math.log10(255))


def test_studio_y_matches_the_per_pixel_formula():
    rgb = np.random.RandomState(3).rand(5, 6, 3)
    y = rgb_to_y_studio(rgb * 255, data_range=255)
    for i in range(5):
        for j in range(6):
            r, g, b = rgb[i, j] * 255
            assert y[i, j] == pytest.approx(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)
    assert np.allclose(rgb_to_y_studio(rgb), y / 255)
    # to_y scores that Y: the same as PSNR on Y images computed by hand.
    other = np.clip(rgb + 0.05, 0, 1)
    assert psnr(rgb, other, to_y=True) == pytest.approx(
        psnr(rgb_to_y_studio(rgb), rgb_to_y_studio(other)))


def test_mismatched_shapes_are_a_user_error():
    with pytest.raises(MagnError, match="shapes"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))


@pytest.mark.datasets
def test_ssim_matches_skimage_on_gray_images(data_root):
    truth = load_image(data_root / "Set12" / "01.png")  # 256x256x1
    degraded = jpeg_compress(truth, 10).astype(np.float32) / 255
    ours = ssim(degraded, truth)
    oracle = _skimage_ssim(degraded[..., 0].astype(np.float64), truth[..., 0].astype(np.float64))
    assert ours == pytest.approx(oracle, rel=1e-6)
    assert 0.5 < ours < 0.95  # a real JPEG q10 image, not a trivial case


@pytest.mark.datasets
def test_ssim_matches_skimage_on_rgb_images(data_root):
    truth = load_image(data_root / "Kodak24" / "kodim05.png")[:200, :300]  # RGB crop
    noisy = add_gaussian_noise(truth, 15, seed=1)
    ours_psnr, ours_ssim = psnr_ssim(noisy, truth)
    clamped = np.clip(noisy, 0, 1).astype(np.float64)
    oracle = _skimage_ssim(clamped, truth.astype(np.float64), channel_axis=2)
    assert ours_ssim == pytest.approx(oracle, rel=1e-6)
    assert ours_ssim == ssim(noisy, truth)
    assert ours_psnr == psnr(noisy, truth)
