"""The Python API (magncli.restore_array, magncli.restore_for_task): the dtypes a user's
arrays come in, outputs clamped to [0, 1] as documented, models with a level map, and
gray arrays through color models."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import magncli
from magncli.errors import MagnError
from magncli.inference import InferenceOptions
from magncli.models.registry import ModelFacts

REPO = Path(__file__).resolve().parents[1]
CPU = InferenceOptions(device="cpu")


class Affine(nn.Module):
    """out[c] = 1.5 x[c] - 0.2 + 0.1 c: leaves [0, 1] on both sides, and tells the
    channels apart."""
    facts = ModelFacts(in_channels=3)

    def forward(self, x):
        return 1.5 * x - 0.2 + 0.1 * torch.arange(3.0).reshape(1, 3, 1, 1)


def _affine(x):                                                       # the oracle, (H, W, 3) float64
    return 1.5 * x - 0.2 + 0.1 * np.arange(3.0)


class LevelEcho(nn.Module):
    """A 3-channel model with a level map: returns its map as the image, 0.5 + map / 4."""
    facts = ModelFacts(in_channels=3, level_input=True)

    def forward(self, x):                                             # (B, 3 + 1, H, W)
        return 0.5 + x[:, 3:].expand(-1, 3, -1, -1) / 4


@pytest.fixture
def pixels():
    return np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)


def test_uint8_uint16_and_float_arrays_are_scaled_by_their_range_and_outputs_clamped(pixels):
    want = np.clip(_affine(pixels / 255.0), 0, 1)
    assert want.min() == 0 and want.max() == 1                        # the clamp is exercised
    for image in (pixels, pixels.astype(np.uint16) * 257, pixels.astype(np.float64) / 255):
        got = magncli.restore_array(Affine(), image, CPU)
        assert got.dtype == np.float32 and got.shape == pixels.shape
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.int32, np.int8, bool, np.complex64])
def test_other_dtypes_are_refused_in_one_line(pixels, dtype):
    with pytest.raises(MagnError, match=f"dtype {np.dtype(dtype)} are not supported: pass uint8, uint16 or float"):
        magncli.restore_array(Affine(), pixels.astype(dtype), CPU)


def test_a_gray_array_goes_through_a_color_model_replicated(pixels):
    gray = pixels[..., 0]
    want = np.clip(_affine(gray[..., None] / 255.0).mean(axis=2), 0, 1)    # as `magn restore` keeps it
    got2d = magncli.restore_array(Affine(), gray, CPU)
    assert got2d.shape == gray.shape
    np.testing.assert_allclose(got2d, want, atol=1e-5)
    got3d = magncli.restore_array(Affine(), gray[..., None], CPU)
    np.testing.assert_allclose(got3d[..., 0], want, atol=1e-5)


def test_a_model_with_a_level_map_runs_blind_or_told_the_level(pixels):
    model = LevelEcho()
    model.checkpoint_meta = {"task": "denoise"}                        # as a trained checkpoint states
    np.testing.assert_allclose(magncli.restore_array(model, pixels, CPU), 0.5 - 1 / 4)      # unknown: -1
    np.testing.assert_allclose(magncli.restore_array(model, pixels, CPU, level=25), 0.5 + 0.5 / 4)
    # Told the task instead: the JPEG map of quality 10 is 1.0.
    np.testing.assert_allclose(magncli.restore_array(LevelEcho(), pixels, CPU, task="dejpeg", level=10), 0.75)
    with pytest.raises(MagnError, match="pass task="):
        magncli.restore_array(LevelEcho(), pixels, CPU)
    with pytest.raises(MagnError, match="has no level map"):
        magncli.restore_array(Affine(), pixels, CPU, task="denoise", level=25)


def test_the_default_jpeg_model_restores_a_uint8_photo():
    """The published color JPEG model has a level map; restore_array runs it with the
    quality unknown, or told it, and returns an image."""
    model = magncli.load_model(str(REPO / "weights" / "magn-s-local-dejpeg-color.safetensors"))
    photo = magncli.read_image(REPO / "examples" / "chelsea.png").pixels[100:148, 100:148]   # uint8 (48, 48, 3)
    blind = magncli.restore_array(model, photo, CPU)
    told = magncli.restore_array(model, photo, CPU, level=20)
    for out in (blind, told):
        assert out.shape == photo.shape and 0 <= out.min() and out.max() <= 1
        assert np.abs(out - photo / 255.0).mean() < 0.02                     # still the photo
    assert not np.array_equal(blind, told)                                    # the level was heard


def test_a_demosaicer_reads_the_pattern_off_the_mosaic_or_is_told_it():
    """A checkpoint that states the demosaic task sees a mosaic as `magn restore` does:
    every Bayer phase through its one GRBG view, "auto" by default."""
    from magncli.degrade import bayer_mosaic

    class Echo(nn.Module):                              # returns the GRBG-aligned mosaic it was given
        facts = ModelFacts(in_channels=3)

        def forward(self, x):
            return x

    model = Echo()
    model.checkpoint_meta = {"task": "demosaic"}
    yy, xx = np.mgrid[0:16, 0:20] / 8.0
    rgb = np.stack([0.7 + 0.2 * np.sin(xx), 0.5 + 0.2 * np.cos(yy), 0.3 + 0.1 * np.sin(xx + yy)], -1)
    mosaic = bayer_mosaic(rgb, "rggb").astype(np.float32)
    detected = magncli.restore_array(model, mosaic, CPU)
    np.testing.assert_array_equal(detected, magncli.restore_array(model, mosaic, CPU, pattern="rggb"))
    np.testing.assert_array_equal(detected, mosaic)             # aligned to GRBG and cropped back
    with pytest.raises(MagnError, match="cannot tell the Bayer pattern"):
        magncli.restore_array(model, rgb.astype(np.float32), CPU)
