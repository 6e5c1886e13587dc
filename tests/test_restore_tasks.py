"""Task-specific restore behaviour: JPEG quality read from the file, Bayer patterns."""
import io

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import nn

from magncli.degrade import BAYER_PATTERNS, align_mosaic, bayer_masks, bayer_mosaic, mosaic_to_cfa
from magncli.jpeg_quality import estimate_jpeg_quality
from magncli.images import Image, read_image, write_image
from magncli.metrics import psnr
from magncli.models.registry import ModelFacts
from magncli.restore import Restorer


def _quant_of(encoded: bytes):
    return PILImage.open(io.BytesIO(encoded)).quantization


@pytest.mark.parametrize("quality", range(1, 101))
def test_quality_is_read_exactly_from_libjpeg_tables(quality):
    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG", quality=quality)
    assert estimate_jpeg_quality(_quant_of(buf.getvalue())) == (quality, True)
    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert estimate_jpeg_quality(_quant_of(enc.tobytes())) == (quality, True)


def test_custom_tables_give_the_nearest_quality():
    buf = io.BytesIO()
    table = [max(1, int(v)) for v in np.linspace(3, 40, 64)]   # no libjpeg quality makes this
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG", qtables=[table])
    quality, exact = estimate_jpeg_quality(_quant_of(buf.getvalue()))
    assert not exact and 1 <= quality <= 100


class Identity(nn.Module):
    facts = ModelFacts(in_channels=3)

    def forward(self, x):
        return x


def test_dejpeg_restore_reports_the_quality_it_assumed(tmp_path):
    px = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    PILImage.fromarray(px).save(tmp_path / "a.jpg", quality=37)
    write_image(tmp_path / "b.png", Image(px))
    restorer = Restorer(task="dejpeg", model=Identity())
    _, info = restorer.restore(read_image(tmp_path / "a.jpg"))
    assert info["quality"] == 37 and info["quality_source"] == "JPEG tables"
    _, info = restorer.restore(read_image(tmp_path / "b.png"))
    assert "quality" not in info


class BilinearGRBG(nn.Module):
    """A demosaicer that only understands GRBG: normalised convolution with GRBG masks."""
    facts = ModelFacts(in_channels=3)

    def forward(self, x):                                              # (B, 3, H, W) mosaic
        h, w = x.shape[-2:]
        masks = torch.from_numpy(bayer_masks(h, w, "grbg").transpose(2, 0, 1)).float()[None]
        k = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).reshape(1, 1, 3, 3).repeat(3, 1, 1, 1)
        num = F.conv2d(x * masks, k, padding=1, groups=3)
        den = F.conv2d(masks.expand_as(x), k, padding=1, groups=3)
        return num / den


def _smooth_rgb(h=48, w=64):
    yy, xx = np.mgrid[0:h, 0:w] / 16.0
    return np.stack([0.5 + 0.4 * np.sin(xx), 0.5 + 0.4 * np.cos(yy), 0.5 + 0.3 * np.sin(xx + yy)], -1)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
@pytest.mark.parametrize("one_channel", [False, True])
def test_every_pattern_through_one_grbg_model(tmp_path, pattern, one_channel):
    rgb = _smooth_rgb()
    mosaic = bayer_mosaic(rgb, pattern)
    stored = mosaic_to_cfa(mosaic) if one_channel else mosaic
    stored = np.rint(stored * 65535).astype(np.uint16).reshape(*rgb.shape[:2], -1)
    write_image(tmp_path / "m.png", Image(stored))
    restorer = Restorer(task="demosaic", model=BilinearGRBG(), pattern=pattern)
    out, info = restorer.restore(read_image(tmp_path / "m.png"))
    assert out.pixels.shape == rgb.shape and info["pattern"] == pattern
    good = psnr(out.to_float(), rgb)
    assert good > 30
    # Control: the same mosaic declared as the wrong pattern is far worse.
    if pattern != "grbg":
        wrong, _ = Restorer(task="demosaic", model=BilinearGRBG(), pattern="grbg").restore(
            read_image(tmp_path / "m.png"))
        assert psnr(wrong.to_float(), rgb) < good - 5


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_align_mosaic_puts_samples_on_grbg_sites(pattern):
    aligned, (dy, dx) = align_mosaic(bayer_mosaic(np.random.default_rng(1).random((7, 9, 3)) + 0.1, pattern), pattern)
    assert aligned.shape == (7 + dy, 9 + dx, 3)
    assert np.array_equal(aligned != 0, bayer_masks(7 + dy, 9 + dx, "grbg"))


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_eval_aligns_every_pattern_for_grbg_models(pattern):
    # `magn eval --pattern P` runs models through the same alignment as restore.
    from magncli.degrade import make_degradation
    from magncli.evaluate import model_method
    from magncli.inference import InferenceOptions
    rgb = _smooth_rgb().astype(np.float32)
    degradation = make_degradation("demosaic", pattern=pattern)
    out = model_method(BilinearGRBG(), InferenceOptions(device="cpu")).restore(
        degradation.apply(rgb), degradation)
    assert out.shape == rgb.shape and psnr(out, rgb) > 30
