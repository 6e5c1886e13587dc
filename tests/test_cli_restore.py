"""`magn restore` end to end, on a tiny real MAGN checkpoint."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from magncli.checkpoints import save_checkpoint
from magncli.cli.app import _register, app
from magncli.errors import MagnError
from magncli.images import Image, read_image, write_image
from magn_testkit import TINY, random_magn


_register()
runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {c: save_checkpoint(d / f"tiny{c}.safetensors", random_magn(in_channels=c, **TINY))
            for c in (1, 3)}


def _img(path, shape, dtype=np.uint8, alpha=False):
    rng = np.random.default_rng(1)
    peak = np.iinfo(dtype).max
    px = rng.integers(0, peak + 1, shape).astype(dtype)
    a = rng.integers(0, peak + 1, shape[:2]).astype(dtype) if alpha else None
    write_image(path, Image(px, a))
    return px, a


def _run(*args):
    return runner.invoke(app, ["restore", *map(str, args)])


def test_restores_a_file_next_to_it(tmp_path, ckpt):
    _img(tmp_path / "a.png", (20, 24, 3))
    res = _run(tmp_path / "a.png", "--task", "denoise", "-w", ckpt[3], "--quiet")
    assert res.exit_code == 0, res.output
    out = read_image(tmp_path / "a_magn.png")
    assert out.pixels.shape == (20, 24, 3) and out.bit_depth == 8


def test_output_matches_the_library(tmp_path, ckpt):
    from magncli import InferenceOptions, load_model, restore_array
    px, _ = _img(tmp_path / "a.png", (20, 24, 3))
    assert _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], "-q").exit_code == 0
    expected = restore_array(load_model(str(ckpt[3])), px.astype(np.float32) / 255, InferenceOptions())
    expected = np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(read_image(tmp_path / "a_magn.png").pixels, expected)


def test_folder_recursive_mirrored_with_json(tmp_path, ckpt):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _img(src / "x.png", (16, 16, 1))
    _img(src / "sub" / "y.png", (12, 20, 1))
    (src / "notes.txt").write_text("not an image")
    res = _run(src, "-r", "-t", "denoise", "-w", ckpt[1], "-o", tmp_path / "out", "--json", "-q")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(os.path.basename(r["output"]) for r in records) == ["x_magn.png", "y_magn.png"]
    assert (tmp_path / "out" / "sub" / "y_magn.png").is_file()
    assert all(r["channels"] == 1 and r["seconds"] >= 0 for r in records)


def test_glob_and_rerun_does_not_stack_suffixes(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 1))
    _img(tmp_path / "b.png", (16, 16, 1))
    assert _run(str(tmp_path / "*.png"), "-t", "denoise", "-w", ckpt[1], "-q").exit_code == 0
    assert _run(str(tmp_path / "*.png"), "-t", "denoise", "-w", ckpt[1], "-q", "--overwrite").exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["a.png", "a_magn.png", "b.png", "b_magn.png"]


def test_one_bad_input_fails_after_the_rest(tmp_path, ckpt):
    _img(tmp_path / "good.png", (16, 16, 3))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp_path / "empty.jpg").write_bytes(b"")
    res = _run(tmp_path / "broken.png", tmp_path / "empty.jpg", tmp_path / "missing.png",
               tmp_path / "good.png", "-t", "denoise", "-w", ckpt[3])
    assert res.exit_code == 1
    assert (tmp_path / "good_magn.png").is_file()
    for name in ("broken_magn.png", "empty_magn.png", "missing_magn.png"):
        assert not (tmp_path / name).exists()
    assert "Traceback" not in res.output
    assert "1 of 4 image(s) restored" in res.output and "3 failed" in res.output
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_existing_output_is_kept_without_overwrite(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 3))
    (tmp_path / "a_magn.png").write_bytes(b"keep me")
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3])
    assert res.exit_code == 1 and "already exists" in res.output
    assert (tmp_path / "a_magn.png").read_bytes() == b"keep me"


def test_16bit_and_alpha_are_carried_through(tmp_path, ckpt):
    _, alpha = _img(tmp_path / "deep.png", (16, 20, 3), np.uint16, alpha=True)
    assert _run(tmp_path / "deep.png", "-t", "denoise", "-w", ckpt[3], "-q").exit_code == 0
    out = read_image(tmp_path / "deep_magn.png")
    assert out.bit_depth == 16 and np.array_equal(out.alpha, alpha)


def test_gray_image_with_color_model_and_color_image_with_gray_model(tmp_path, ckpt):
    _img(tmp_path / "g.png", (16, 16, 1))
    res = _run(tmp_path / "g.png", "-t", "denoise", "-w", ckpt[3], "--json", "-q")
    assert res.exit_code == 0 and "color model" in res.stdout
    assert read_image(tmp_path / "g_magn.png").channels == 1
    _img(tmp_path / "c.png", (16, 16, 3))
    res = _run(tmp_path / "c.png", "-t", "denoise", "-w", ckpt[1])
    assert res.exit_code == 1 and "gray" in res.output and "Traceback" not in res.output


def test_bad_options_are_one_line_errors(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 3))
    for extra, message in ((["--tile", "30"], "multiple of 4"), (["--precision", "fp16"], "CUDA"),
                           (["--ext", "gif"], "cannot write")):
        res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], *extra)
        assert res.exit_code == 1 and message in _said(res) and "Traceback" not in res.output


def _said(res) -> str:
    """What the user sees: the output, and the one-line error that `magn` prints for a
    MagnError raised by the command (the runner hands it back instead of printing it)."""
    return res.output + (str(res.exception) if isinstance(res.exception, MagnError) else "")


@pytest.mark.parametrize("extra, message", [
    (["-t", "denoise", "--tile", "-8"], "--tile must be a positive multiple of 4"),
    (["-t", "denoise", "--overlap", "-1"], "--overlap must be >= 0"),
    (["-t", "denoise", "--device", "tpu"], "unknown device 'tpu'"),
    (["-t", "denoise", "--precision", "fp8"], "unknown precision 'fp8'"),
    (["-t", "denoise", "--sigma", "-5"], "sigma must be a number >= 0"),
    (["-t", "dejpeg", "--quality", "0"], "quality must be an integer from 1 to 100"),
    (["-t", "dejpeg", "--quality", "101"], "quality must be an integer from 1 to 100"),
    (["-t", "demosaic", "--pattern", "rgbg"], "unknown Bayer pattern 'rgbg'"),
])
def test_a_bad_setting_is_refused_once_before_any_image(tmp_path, ckpt, extra, message):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        _img(folder / name, (16, 16, 3))
    res = _run(folder, "-w", ckpt[3], *extra)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert _said(res).count(message) == 1, _said(res)   # once, not once per image
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png", "c.png"]


def test_python_dash_m_and_a_bad_checkpoint(tmp_path, ckpt):
    _img(tmp_path / "a.png", (12, 12, 3))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip")
    cmd = [sys.executable, "-m", "magncli", "restore", str(tmp_path / "a.png"), "-t", "denoise", "-w"]
    ok = subprocess.run(cmd + [str(ckpt[3]), "-q"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run(cmd + [str(bad), "--suffix", "_b"], capture_output=True, text=True)
    assert res.returncode == 1 and "Traceback" not in res.stderr and "bad.pt" in res.stderr
