"""magncli/eval_methods.py: the baselines (here OpenCV's demosaicers, by our pattern names).
Runs of whole sets are tested through the command (tests/test_cli_eval.py) and against
published input rows (tests/test_protocols.py)."""
import cv2
import numpy as np
import pytest

from magncli.datasets import load_image
from magncli.degrade import BAYER_PATTERNS, bayer_mosaic, mosaic_to_cfa
from magncli.eval_methods import BASELINES, opencv_bayer_code
from magncli.metrics import psnr
from magncli.tasks import make_degradation


def _smooth_rgb(h=64, w=96):
    """A smooth colour image (float32 HxWx3) that any decent demosaicker recovers well."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    return np.stack([0.5 + 0.4 * np.sin(3 * x), 0.5 + 0.4 * np.cos(2 * y), 0.3 + 0.5 * x * y],
                    axis=2).astype(np.float32)


@pytest.mark.parametrize("pattern", BAYER_PATTERNS)
def test_opencv_bayer_code_reconstructs_a_smooth_image(pattern):
    rgb = _smooth_rgb()
    cfa = np.round(mosaic_to_cfa(bayer_mosaic(rgb, pattern)) * 255).astype(np.uint8)
    right = cv2.demosaicing(cfa, opencv_bayer_code(pattern)).astype(np.float32) / 255
    assert psnr(right, rgb) > 35
    for other in BAYER_PATTERNS:
        if other != pattern:  # a wrong code gives a visibly wrong image
            wrong = cv2.demosaicing(cfa, opencv_bayer_code(other)).astype(np.float32) / 255
            assert psnr(wrong, rgb) < psnr(right, rgb) - 10


@pytest.mark.datasets
def test_opencv_demosaic_baselines_beat_the_mosaic_on_kodak(data_root):
    degradation = make_degradation("demosaic")
    for name in ("kodim01.png", "kodim19.png"):
        truth = load_image(data_root / "Kodak24" / name)
        mosaic = degradation.apply(truth)
        floor = psnr(mosaic, truth)  # about 8-9 dB
        for baseline in ("opencv-bilinear", "opencv-ea", "opencv-vng"):
            restored = BASELINES[baseline].restore(mosaic, degradation)
            assert psnr(restored, truth) > floor + 15, (name, baseline)
