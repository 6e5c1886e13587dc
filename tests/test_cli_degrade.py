"""`magn degrade` through the Typer app, on images the tests make."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from magncli.cli.app import app
from magncli.datasets import load_image
from magncli.degrade import add_gaussian_noise

from cli_testkit import make_images, runner, user_error
import hostile_kit


def test_degrade_writes_exact_unclipped_noise_and_a_manifest(tmp_path):
    sources = make_images(tmp_path / "clean", color=False)
    out = tmp_path / "noisy"
    args = ["degrade", str(tmp_path / "clean"), "--task", "denoise", "--sigma", "30",
            "--seed", "5", "-o", str(out), "--format", "tiff"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for source in sources:  # fresh RandomState(5) per image, stored unclipped
        expected = add_gaussian_noise(load_image(source), 30, 5)
        assert np.array_equal(load_image(out / f"{source.stem}.tiff"), expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["degradation"] == {"task": "denoise", "sigma": 30, "seed": 5}
    assert [f["seed"] for f in manifest["files"]] == [5, 5]
    assert manifest["files"][0]["output"] == "img0.tiff" and manifest["format"] == "tiff"

    again = runner.invoke(app, args)  # never overwrites silently
    user_error(again, "already exists", "--overwrite")
    assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0


def test_degrade_jpeg_gray_stays_one_channel_and_mosaic_needs_color(tmp_path):
    make_images(tmp_path / "clean", color=False)
    result = runner.invoke(app, ["degrade", str(tmp_path / "clean" / "img0.png"), "--task",
                                 "dejpeg", "--quality", "10", "-o", str(tmp_path / "jpeg")])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "jpeg" / "img0.png"), cv2.IMREAD_UNCHANGED).ndim == 2

    mosaic = runner.invoke(app, ["degrade", str(tmp_path / "clean"), "--task", "demosaic",
                                 "-o", str(tmp_path / "mosaic")])
    # Per file: each gray image gets its one line; nothing was written, so no manifest.
    assert mosaic.exit_code == 1 and "Traceback" not in mosaic.output
    assert [line for line in mosaic.stderr.splitlines() if "RGB" in line] == [
        f"error: {tmp_path / 'clean' / name}: demosaicing needs an RGB image, got shape (48, 64, 1)"
        for name in ("img0.png", "img1.png")]
    assert not (tmp_path / "mosaic").exists()
    bad = runner.invoke(app, ["degrade", str(tmp_path / "clean"), "--task", "dejpeg",
                              "--quality", "0", "-o", str(tmp_path / "q0")])
    user_error(bad, "quality")


def test_degrade_writes_the_jpeg_file_itself(tmp_path):
    """--format jpg: the file decodes to exactly the protocol's dejpeg input, and restore
    reads its quality back from the tables."""
    from magncli.tasks import make_degradation
    from magncli.jpeg_quality import estimate_jpeg_quality
    from magncli.images import read_image

    folder = tmp_path / "set"
    make_images(folder, n=1)
    clean = load_image(next(folder.iterdir()))
    result = runner.invoke(app, ["degrade", str(folder), "--task", "dejpeg", "--quality", "30",
                                 "--format", "jpg", "-o", str(tmp_path / "jpeg")])
    assert result.exit_code == 0, result.output
    jpeg = read_image(next((tmp_path / "jpeg").glob("*.jpg")))
    assert np.array_equal(jpeg.to_float(), make_degradation("dejpeg", 30).apply(clean))
    assert estimate_jpeg_quality(jpeg.jpeg_quantization) == (30, True)
    wrong = runner.invoke(app, ["degrade", str(folder), "--task", "denoise", "--sigma", "25",
                                "--format", "jpg", "-o", str(tmp_path / "noisy")])
    user_error(wrong, "--format jpg", "dejpeg only")


def test_degrade_png16_stores_the_clipped_signal_in_16_bits(tmp_path):
    (source,) = make_images(tmp_path / "clean", n=1)
    result = runner.invoke(app, ["degrade", str(source), "--task", "denoise", "--sigma", "50",
                                 "-o", str(tmp_path / "out"), "--format", "png16"])
    assert result.exit_code == 0, result.output
    stored = cv2.imread(str(tmp_path / "out" / "img0.png"), cv2.IMREAD_UNCHANGED)[..., ::-1]
    noisy = add_gaussian_noise(load_image(source), 50, 0)
    assert stored.dtype == np.uint16
    # Oracle in float64: exact for every 16-bit level (float32 rounds some ties).
    assert np.array_equal(stored, np.floor(np.clip(noisy.astype(np.float64), 0, 1) * 65535 + 0.5))


def test_degrade_attempts_every_file_and_its_manifest_lists_what_was_written(tmp_path):
    # A bad file used to stop the run at it, leaving outputs and no manifest.
    clean = tmp_path / "clean"
    make_images(clean, n=3)
    (clean / "img1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    hostile_kit.bomb(clean / "img1b.png")
    out = tmp_path / "noisy"
    result = runner.invoke(app, ["degrade", str(clean), "--task", "denoise", "--sigma", "25", "-o", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = result.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in errors] == [str(clean / "img1.png"), str(clean / "img1b.png")]
    assert all(line.startswith("error: ") for line in errors)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [f["output"] for f in manifest["files"]] == ["img0.png", "img2.png"]
    assert [f["input"] for f in manifest["failed"]] == [str(clean / "img1.png"), str(clean / "img1b.png")]
    assert sorted(p.name for p in out.iterdir()) == ["img0.png", "img2.png", "manifest.json"]
    assert "wrote 2 png files" in result.stdout and "2 failed" in result.stdout


def test_degrade_of_a_bomb_is_one_line_and_writes_nothing(tmp_path):
    bomb = hostile_kit.bomb(tmp_path / "bomb.png")
    result = subprocess.run([sys.executable, "-m", "magncli", "degrade", str(bomb), "--task", "dejpeg",
                             "--quality", "10", "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {bomb}: too large")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_a_seed_numpy_cannot_take_is_one_line_and_writes_nothing(tmp_path, seed):
    """Issue #37: RandomState's ValueError came out as a traceback."""
    make_images(tmp_path / "clean", color=False)
    result = runner.invoke(app, ["degrade", str(tmp_path / "clean"), "--task", "denoise", "--sigma", "25",
                                 "--seed", seed, "-o", str(tmp_path / "out")])
    user_error(result, "seed must be an integer from 0 to 4294967295")
    assert not (tmp_path / "out").exists()
    ok = runner.invoke(app, ["degrade", str(tmp_path / "clean"), "--task", "denoise", "--sigma", "25",
                             "--seed", "4294967295", "-o", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output


def test_degrading_a_folder_into_itself_never_replaces_the_originals(tmp_path):
    """Issue #37: `magn degrade DIR -o DIR --overwrite` replaced the clean files."""
    sources = make_images(tmp_path / "clean", color=False)
    before = {p: p.read_bytes() for p in sources}
    result = runner.invoke(app, ["degrade", str(tmp_path / "clean"), "--task", "denoise", "--sigma", "25",
                                 "-o", str(tmp_path / "clean"), "--overwrite"])
    user_error(result, "is an input", "clean original")
    assert {p: p.read_bytes() for p in sources} == before
    assert sorted(os.listdir(tmp_path / "clean")) == sorted(p.name for p in sources)


def test_a_fifo_is_named_as_what_it_is_not_as_missing(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    result = runner.invoke(app, ["degrade", str(tmp_path / "pipe.png"), "--task", "denoise", "--sigma", "25",
                                 "-o", str(tmp_path / "out")])
    message = user_error(result, "not a regular file")
    assert "does not exist" not in message and not (tmp_path / "out").exists()


@pytest.mark.parametrize("asked, factors", [("444", [(1, 1), (1, 1), (1, 1)]), ("422", [(2, 1), (1, 1), (1, 1)]),
                                            ("420", [(2, 2), (1, 1), (1, 1)])])
def test_degrade_jpeg_writes_the_subsampling_asked_and_records_it(tmp_path, asked, factors):
    from magncli.images import read_image
    make_images(tmp_path / "set", n=1)
    result = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", "dejpeg", "--quality", "90",
                                 "--subsampling", asked, "--format", "jpg", "-o", str(tmp_path / "jpeg")])
    assert result.exit_code == 0, result.output
    assert read_image(tmp_path / "jpeg" / "img0.jpg").jpeg_sampling == factors
    manifest = json.loads((tmp_path / "jpeg" / "manifest.json").read_text())
    assert manifest["degradation"]["subsampling"] == ":".join(asked)


def test_degrade_jpeg_by_default_writes_the_bytes_it_always_wrote(tmp_path):
    """The protocol's 4:2:0 file, byte for byte what the encoder call before --subsampling made."""
    make_images(tmp_path / "set", n=1)
    result = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", "dejpeg", "--quality", "30",
                                 "--format", "jpg", "-o", str(tmp_path / "jpeg")])
    assert result.exit_code == 0, result.output
    bgr = cv2.imread(str(tmp_path / "set" / "img0.png"))
    params = [cv2.IMWRITE_JPEG_QUALITY, 30]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, before = cv2.imencode(".jpg", bgr, params)
    assert ok and (tmp_path / "jpeg" / "img0.jpg").read_bytes() == before.tobytes()


def test_an_unknown_subsampling_is_one_line(tmp_path):
    make_images(tmp_path / "set", n=1)
    result = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", "dejpeg", "--quality", "30",
                                 "--subsampling", "411", "-o", str(tmp_path / "jpeg")])
    user_error(result, "unknown chroma subsampling '411'", "444, 422, 420")
