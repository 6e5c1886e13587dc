"""Degradations: determinism, the frozen noise stream, libjpeg 4:2:0, Bayer layouts."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from magncli.datasets import read_raw
from magncli.datasets import list_images, load_ground_truth
from magncli.degrade import (BAYER_PATTERNS, add_gaussian_noise, align_mosaic, bayer_masks, bayer_mosaic,
                             cfa_to_mosaic, detect_pattern, gaussian_noise_torch, jpeg_compress, mosaic_to_cfa)
from magncli.errors import MagnError


def _smooth_rgb(h=64, w=96):
    """A smooth colour image (float32 HxWx3) that any decent demosaicker recovers well."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y), 0.3 + 0.5 * x * y],
                    axis=2).astype(np.float32)


def test_noise_is_numpys_frozen_legacy_stream():
    img = np.zeros((1, 3), np.float32)
    noisy = add_gaussian_noise(img, 255, seed=0)
    # RandomState(0).standard_normal() starts with these, on every numpy version.
    assert np.allclose(noisy[0], [1.764052345967664, 0.4001572083672233, 0.9787379841057392])
    assert noisy.dtype == np.float32


def test_noise_is_deterministic_per_seed():
    img = _smooth_rgb()
    assert np.array_equal(add_gaussian_noise(img, 25, 7), add_gaussian_noise(img, 25, 7))
    assert not np.array_equal(add_gaussian_noise(img, 25, 7), add_gaussian_noise(img, 25, 8))


def test_noise_is_unclipped_unrounded_with_the_right_sigma():
    img = np.full((256, 256), 0.02, np.float32)
    noise = add_gaussian_noise(img, 25, seed=0) - img
    assert abs(noise.std() * 255 - 25) < 0.5
    assert abs(noise.mean()) < 0.002
    assert (img + noise).min() < -0.2  # nothing clipped at 0
    on_grid = np.isclose((img + noise) * 255, np.round((img + noise) * 255), atol=1e-4)
    assert on_grid.mean() < 0.01  # nor rounded to 8 bits


def test_torch_noise_has_one_sigma_per_image_and_follows_its_generator():
    x = torch.full((2, 1, 128, 128), 0.5)
    noisy = gaussian_noise_torch(x, torch.tensor([10.0, 50.0]), torch.Generator().manual_seed(1))
    stds = (noisy - x).flatten(1).std(dim=1) * 255
    assert abs(stds[0] - 10) < 0.5 and abs(stds[1] - 50) < 2
    again = gaussian_noise_torch(x, torch.tensor([10.0, 50.0]), torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_jpeg_keeps_gray_one_channel_and_rounds_float_input():
    gray = (_smooth_rgb()[..., :1] * 255).round().astype(np.uint8)  # HxWx1
    out = jpeg_compress(gray, 20)
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert jpeg_compress(gray[..., 0], 20).shape == gray.shape[:2]
    as_float = gray.astype(np.float32) / 255 + 0.001  # rounds back to `gray`
    assert np.array_equal(jpeg_compress(as_float, 20), out)


@pytest.mark.datasets
def test_color_jpeg_is_libjpeg_4_2_0(data_root):
    rgb = read_raw(data_root / "Kodak24" / "kodim03.png")  # uint8 RGB
    ours = jpeg_compress(rgb, 30)

    def pillow(subsampling):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, "JPEG", quality=30, subsampling=subsampling)
        return np.asarray(Image.open(buffer).convert("RGB"))

    assert np.array_equal(ours, pillow(2))  # 4:2:0, standard IJG tables
    assert not np.array_equal(ours, pillow(0))  # 4:4:4


def test_bad_parameters_are_user_errors():
    img = np.zeros((8, 8, 3), np.float32)
    for bad in (lambda: add_gaussian_noise(img, -1, 0),
                lambda: jpeg_compress(img, 0), lambda: jpeg_compress(img, 101),
                lambda: jpeg_compress(img, 50.5),
                lambda: bayer_masks(4, 4, "rgbg"), lambda: bayer_mosaic(img[..., :1])):
        with pytest.raises(MagnError):
            bad()


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_bayer_mosaic_matches_a_naive_loop(pattern):
    rgb = np.random.RandomState(0).rand(5, 7, 3).astype(np.float32)  # odd sizes on purpose
    expected = np.zeros_like(rgb)
    for i in range(5):
        for j in range(7):
            colour = pattern[(i % 2) * 2 + (j % 2)]
            c = "rgb".index(colour)
            expected[i, j, c] = rgb[i, j, c]
    assert np.array_equal(bayer_mosaic(rgb, pattern), expected)
    assert bayer_masks(5, 7, pattern).sum(axis=2).min() == 1  # one sample per site


def test_default_pattern_is_grbg():
    masks = bayer_masks(2, 2)
    assert masks[0, 0, 1] and masks[0, 1, 0] and masks[1, 0, 2] and masks[1, 1, 1]


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_cfa_to_mosaic_roundtrip(pattern):
    mosaic = bayer_mosaic(_smooth_rgb(), pattern)
    cfa = mosaic_to_cfa(mosaic)  # HxW
    assert cfa.shape == mosaic.shape[:2]
    assert np.array_equal(cfa_to_mosaic(cfa, pattern), mosaic)
    assert np.array_equal(cfa_to_mosaic(cfa[..., None], pattern), mosaic)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_align_mosaic_puts_samples_on_grbg_sites(pattern):
    aligned, (dy, dx) = align_mosaic(bayer_mosaic(np.random.default_rng(1).random((7, 9, 3)) + 0.1, pattern), pattern)
    assert aligned.shape == (7 + dy, 9 + dx, 3)
    assert np.array_equal(aligned != 0, bayer_masks(7 + dy, 9 + dx, "grbg"))


# --------------------------------------------------------------------------- which Bayer pattern
def _detected_or_refused(mosaic):
    try:
        return detect_pattern(mosaic)
    except MagnError as e:
        assert "cannot tell the Bayer pattern" in str(e) and "pass pattern=" in str(e)
        assert "\n" not in str(e)
        return str(e)


def test_a_zero_filled_mosaic_shows_its_pattern_in_its_zeros(data_root):
    """Every Kodak24 and McMaster photo as a zero-filled mosaic of each phase: the
    pattern whose empty sites are zero, every one."""
    for name in ("Kodak24", "McMaster"):
        for path in list_images(data_root / name):
            rgb = load_ground_truth(path, "color")
            for pattern in BAYER_PATTERNS:
                assert detect_pattern(bayer_mosaic(rgb, pattern)) == pattern, (path.name, pattern)


def test_a_one_channel_cfa_is_never_given_a_wrong_pattern(data_root):
    """Every Kodak24 and McMaster photo as a 1-channel CFA of each phase: the green
    diagonal is always found; red against blue is told by a prior (photographs are
    redder than blue on average) with a margin, so a photo as blue as red is refused
    in every phase (4 of the 48: kodim09, kodim10, kodim21 and McMaster 4), and no
    answer is ever wrong."""
    refused = set()
    for name in ("Kodak24", "McMaster"):
        for path in list_images(data_root / name):
            rgb = load_ground_truth(path, "color")
            for pattern in BAYER_PATTERNS:
                got = _detected_or_refused(mosaic_to_cfa(bayer_mosaic(rgb, pattern)))
                if got != pattern:
                    assert "red and blue" in got, (path.name, pattern, got)
                    refused.add(path.name)
    assert len(refused) <= 4, refused


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_a_synthetic_cfa_of_each_phase_is_detected(pattern):
    cfa = mosaic_to_cfa(bayer_mosaic(_smooth_rgb() * np.array([1.0, 0.8, 0.4], np.float32), pattern))
    assert detect_pattern(cfa) == pattern == detect_pattern(cfa[..., None])


@pytest.mark.parametrize("image, why", [
    (np.full((16, 16), 0.5, np.float32), "neither diagonal"),            # flat: no green diagonal
    (np.random.default_rng(0).random((16, 16)).astype(np.float32), "neither diagonal"),
    (np.zeros((1, 5), np.float32), "no whole 2x2 Bayer tile"),
    (np.random.default_rng(0).random((16, 16, 3)).astype(np.float32), "not zero-filled"),
    (np.zeros((8, 8, 3), np.float32), "fit grbg, rggb, gbrg, bggr alike"),
])
def test_an_unclear_mosaic_is_refused_in_one_line(image, why):
    message = _detected_or_refused(image)
    assert why in message
