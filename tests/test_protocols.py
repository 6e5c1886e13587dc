"""The protocol page's input rows, through run_eval (the path `magn eval` takes)."""
import pytest

from magncli.evaluate import run_eval

pytestmark = pytest.mark.datasets


def _psnr_by_level(rows):
    return [round(r["psnr"], 2) for r in rows]


def test_classic5_jpeg_input_rows(data_root):
    rows = run_eval("dejpeg", ["Classic5"], [10, 20, 30, 40], ["input"], data_root=data_root)
    assert _psnr_by_level(rows) == [27.82, 30.12, 31.48, 32.43]
    assert [r["channels"] for r in rows] == ["gray"] * 4
    assert rows[0]["n_images"] == 5
    assert rows[0]["degradation"] == {"task": "dejpeg", "quality": 10, "subsampling": "4:2:0"}


@pytest.mark.slow
def test_live1_y_jpeg_input_rows(data_root):
    rows = run_eval("dejpeg", ["LIVE1"], [10, 20, 30, 40], ["input"], data_root=data_root,
                    channels="gray")
    assert _psnr_by_level(rows) == [27.77, 30.07, 31.41, 32.35]
    assert rows[0]["n_images"] == 29 and "studio Y" in rows[0]["note"]


@pytest.mark.slow
def test_mosaic_input_rows(data_root):
    rows = run_eval("demosaic", ["McMaster", "Kodak24"], [], ["input"], data_root=data_root)
    assert _psnr_by_level(rows) == [9.17, 8.56]
    assert rows[0]["degradation"] == {"task": "demosaic", "pattern": "grbg"}


def test_unclipped_noise_input_row_and_nlm(data_root):
    rows = run_eval("denoise", ["Set12"], [25], ["input", "opencv-nlm"], seed=0,
                    data_root=data_root)
    noisy, nlm = rows
    assert noisy["psnr"] == pytest.approx(20.17, abs=0.05)  # 20 log10(255/25)
    assert noisy["seed"] == 0 and noisy["degradation"]["sigma"] == 25
    assert nlm["psnr"] > noisy["psnr"] + 6  # measured 27.91 vs 20.20
    assert len(nlm["images"]) == 12 and nlm["images"][0]["name"] == "01"

