"""`magn restore` end to end, on a tiny real MAGN checkpoint."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magncli.checkpoints import save_checkpoint
from magncli.cli.app import app
from magncli.cli.common import cli_message
from magncli.errors import MagnError
from magncli.images import Image, read_image, write_image
from cli_testkit import user_error
from magn_testkit import TINY, random_magn
import hostile_kit


runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


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


def test_the_line_says_when_a_jpeg_quality_is_read_and_when_it_is_unknown(tmp_path, ckpt):
    from PIL import Image as PILImage
    px, _ = _img(tmp_path / "a.png", (20, 24, 3))
    PILImage.fromarray(px).save(tmp_path / "b.jpg", quality=33)
    res = _run(tmp_path / "a.png", tmp_path / "b.jpg", "-t", "dejpeg", "-w", ckpt[3])
    assert res.exit_code == 0, res.output
    lines = " ".join(res.stderr.split()).split(str(tmp_path / "b.jpg"))      # undo rich's wrapping
    assert "quality unknown (no JPEG tables; --quality states it)" in lines[0]
    assert "quality 33 from the JPEG tables" in lines[1]


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


def test_demosaic_reads_the_pattern_off_each_mosaic_and_says_so(tmp_path, ckpt):
    """--pattern auto, the default: the line and the record say the pattern used and
    that it was detected; a mosaic it cannot tell is one line naming --pattern."""
    from magncli.degrade import bayer_mosaic, mosaic_to_cfa
    yy, xx = np.mgrid[0:24, 0:32] / 8.0
    rgb = np.stack([0.6 + 0.3 * np.sin(xx), 0.5 + 0.3 * np.cos(yy), 0.3 + 0.2 * np.sin(xx + yy)], -1)
    write_image(tmp_path / "cfa.png", Image(np.rint(mosaic_to_cfa(bayer_mosaic(rgb, "bggr")) * 255).astype(np.uint8)[..., None]))
    _img(tmp_path / "noise.png", (24, 32, 3))                        # 3 channels, no zeros: no mosaic
    res = _run(tmp_path / "cfa.png", tmp_path / "noise.png", "-t", "demosaic", "-w", ckpt[3], "--json")
    assert res.exit_code == 1
    record = json.loads(res.stdout.splitlines()[0])
    assert (record["pattern"], record["pattern_source"]) == ("bggr", "detected")
    assert "pattern bggr (detected)" in " ".join(res.stderr.split())
    error = json.loads(res.stdout.splitlines()[1])["error"]
    assert "is a full-color image, not a Bayer mosaic" in error      # #37's word, before any detection
    given = _run(tmp_path / "cfa.png", "-t", "demosaic", "-w", ckpt[3], "--pattern", "bggr", "--json",
                 "--overwrite", "-q")
    assert json.loads(given.stdout)["pattern_source"] == "given"


def test_a_checkpoint_for_another_task_is_refused_unless_forced(tmp_path):
    """A checkpoint's metadata names its task (training writes it); run for another
    task it is one line naming both, and --force runs it anyway."""
    from magn_testkit import random_magn
    denoiser = save_checkpoint(tmp_path / "den.safetensors", random_magn(in_channels=3, **TINY),
                               {"task": "denoise", "channels": 3})
    _img(tmp_path / "a.png", (16, 16, 3))
    res = _run(tmp_path / "a.png", "-t", "dejpeg", "-w", denoiser)
    assert res.exit_code == 1 and not (tmp_path / "a_magn.png").exists()
    line = " ".join(res.stderr.split())
    assert "den.safetensors is a denoise checkpoint, not one for dejpeg: pass --force to run it anyway" in line
    forced = _run(tmp_path / "a.png", "-t", "dejpeg", "-w", denoiser, "--force", "-q")
    assert forced.exit_code == 0 and (tmp_path / "a_magn.png").exists()
    # A published name: the shipped color denoiser, asked to demosaic (a mosaic).
    from magncli.degrade import bayer_mosaic
    write_image(tmp_path / "m.png", Image(bayer_mosaic(np.full((16, 16, 3), 0.5, np.float32), "grbg")))
    res = _run(tmp_path / "m.png", "-t", "demosaic", "-w", "magn-s-local-denoise-color", "--pattern", "grbg",
               "--offline", "-o", tmp_path / "out")
    assert res.exit_code == 1 and "is a denoise checkpoint, not one for demosaic" in " ".join(res.stderr.split())


def test_bad_options_are_one_line_errors(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 3))
    for extra, message in ((["--tile", "30"], "multiple of 4"), (["--precision", "fp16"], "CUDA"),
                           (["--ext", "gif"], "cannot write")):
        res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], *extra)
        assert res.exit_code == 1 and message in _said(res) and "Traceback" not in res.output


def _said(res) -> str:
    """What the user sees: the output, and the one-line error that `magn` prints for a
    MagnError raised by the command (the runner hands it back instead of printing it)."""
    return res.output + (cli_message(res.exception) if isinstance(res.exception, MagnError) else "")


@pytest.mark.parametrize("extra, message", [
    (["-t", "denoise", "--tile", "-8"], "--tile -8 must be a positive multiple of 4"),
    (["-t", "denoise", "--overlap", "-1"], "--overlap -1 must be >= 0"),
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


# --------------------------------------------------------------------------- issue 19
# Hostile and unlucky inputs: one line each, the rest of the batch still runs.
def _errors(res):
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_hostile_files_are_one_line_each_and_real_stderr_says_nothing_else(tmp_path, ckpt):
    bad = [hostile_kit.bomb(tmp_path / "bomb.png"),
           hostile_kit.bomb(tmp_path / "bomb2.png", 20_000, 10_000),
           tmp_path / "huge.png", hostile_kit.animated(tmp_path / "anim.gif"),
           hostile_kit.animated(tmp_path / "pages.tif")]
    bad[2].write_bytes(hostile_kit.png_claiming(12_000, 12_000))
    for path in bad:
        res = subprocess.run([sys.executable, "-m", "magncli", "restore", str(path), "-t", "denoise",
                              "-w", str(ckpt[3]), "-q"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 1
        assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {path}: "), res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in bad)


@pytest.mark.parametrize("name, words", [("anim.gif", "3 frames"), ("pages.tif", "3 frames"),
                                         ("anim.png", "3 frames")])
def test_several_frames_are_refused_not_dropped(tmp_path, ckpt, name, words):
    path = hostile_kit.animated(tmp_path / name)
    res = _run(path, "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 1 and len(_errors(res)) == 1 and words in _errors(res)[0]
    assert sorted(os.listdir(tmp_path)) == [name]


def test_a_bomb_in_a_folder_fails_alone(tmp_path, ckpt):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("01.png", "03.png", "05.png"):
        _img(folder / name, (16, 16, 3))
    hostile_kit.bomb(folder / "02.png")
    hostile_kit.animated(folder / "04.tif")
    res = _run(folder, "-t", "denoise", "-w", ckpt[3], "-o", tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert sorted(os.listdir(tmp_path / "out")) == ["01_magn.png", "03_magn.png", "05_magn.png"]
    assert [e.split(":")[1].strip() for e in _errors(res)] == [str(folder / "02.png"), str(folder / "04.tif")]
    assert "3 of 5 image(s) restored" in res.stderr and "2 failed" in res.stderr


def test_an_unexpected_failure_of_one_image_does_not_stop_the_batch(tmp_path, ckpt, monkeypatch):
    from magncli import restore as restore_mod
    real = restore_mod.read_image

    def flaky(path):
        if path.name == "a.png":
            raise OSError(5, "Input/output error", str(path))
        if path.name == "b.png":
            raise MemoryError()
        if path.name == "c.png":
            raise ValueError("something odd\nsecond line")
        return real(path)

    monkeypatch.setattr(restore_mod, "read_image", flaky)
    for name in "abcd":
        _img(tmp_path / f"{name}.png", (16, 16, 3))
    res = _run(*(tmp_path / f"{n}.png" for n in "abcd"), "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert _errors(res) == [f"error: {tmp_path / 'a.png'}: Input/output error",
                            f"error: {tmp_path / 'b.png'}: out of memory (try a smaller --tile)",
                            f"error: {tmp_path / 'c.png'}: ValueError: something odd"]
    assert (tmp_path / "d_magn.png").is_file()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_a_read_only_output_folder_is_one_line_per_image_before_any_compute(tmp_path, ckpt, monkeypatch):
    import errno
    from magncli import fileio
    from magncli.restore import Restorer
    for name in ("a.png", "b.png"):
        _img(tmp_path / name, (16, 16, 3))
    out = tmp_path / "ro"
    out.mkdir()
    real_open = os.open

    def read_only(path, *args, **kw):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(fileio.os, "open", read_only)
    ran = []
    monkeypatch.setattr(Restorer, "restore", lambda self, image, **kw: ran.append(1))
    res = _run(tmp_path / "a.png", tmp_path / "b.png", "-t", "denoise", "-w", ckpt[3], "-o", out, "-q")
    assert res.exit_code == 1 and "Traceback" not in res.output and not ran
    assert _errors(res) == [f"error: {out / n}_magn.png: cannot write (Read-only file system)" for n in "ab"]


def test_stale_temporaries_of_a_killed_run_are_removed_and_reported(tmp_path, ckpt):
    from test_fileio import _dead_pid, _killed_while_writing
    from magncli.fileio import _host
    _img(tmp_path / "01.png", (16, 16, 3))
    _img(tmp_path / "02.png", (16, 16, 3))
    _killed_while_writing(tmp_path / "01_magn.png")      # kill -9 in the middle of a write
    stale = tmp_path / f".02_magn.png.{_dead_pid()}@{_host()}.abcdefgh.part"
    stale.write_bytes(b"x" * 32768)
    live = tmp_path / f".02_magn.png.{os.getpid()}@{_host()}.abcdefgh.part"
    live.write_bytes(b"x")
    left = sorted(p for p in tmp_path.iterdir() if p.name.startswith(".01"))
    res = _run(tmp_path, "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 0, res.output
    removed = [line for line in res.stderr.splitlines() if line.startswith("removed ")]
    assert len(removed) == 2 and all("left by an interrupted magn run" in line for line in removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["01.png", "02.png", "01_magn.png", "02_magn.png", live.name])
    assert all(str(p) in res.stderr for p in left if p.suffix == ".part") and str(stale) in res.stderr


def test_an_output_another_process_is_making_is_skipped_before_compute(tmp_path, ckpt, monkeypatch):
    from test_fileio import _python
    from magncli.restore import Restorer
    _img(tmp_path / "01.png", (16, 16, 3))
    _img(tmp_path / "02.png", (16, 16, 3))
    target = tmp_path / "01_magn.png"
    holder = _python(f"""
        import time
        from magncli.fileio import claim_output
        with claim_output({str(target)!r}):
            print("held", flush=True)
            time.sleep(120)
    """, stdout=subprocess.PIPE, text=True)
    real, ran = Restorer.restore, []
    monkeypatch.setattr(Restorer, "restore", lambda self, image, **kw: ran.append(1) or real(self, image, **kw))
    try:
        assert holder.stdout.readline().strip() == "held"
        res = _run(tmp_path / "01.png", tmp_path / "02.png", "-t", "denoise", "-w", ckpt[3], "-q")
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 1 and len(ran) == 1           # only 02 was computed
    assert _errors(res) == [f"error: {target}: being written by another magn process "
                            f"(pid {holder.pid} on {__import__('magncli.fileio').fileio._host()})"]
    assert sorted(os.listdir(tmp_path)) == [".01_magn.png.magn-lock", "01.png", "02.png", "02_magn.png"]
    assert _run(tmp_path / "01.png", "-t", "denoise", "-w", ckpt[3], "-q").exit_code == 0
    assert sorted(os.listdir(tmp_path)) == ["01.png", "01_magn.png", "02.png", "02_magn.png"]


def test_an_existing_output_costs_no_compute_and_is_never_replaced(tmp_path, ckpt, monkeypatch):
    from magncli.restore import Restorer
    _img(tmp_path / "a.png", (16, 16, 3))
    (tmp_path / "a_magn.png").write_bytes(b"keep me")
    real = Restorer.restore
    monkeypatch.setattr(Restorer, "restore", lambda self, image, **kw: pytest.fail("computed"))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 1 and _errors(res) == [
        f"error: {tmp_path / 'a_magn.png'}: already exists (pass --overwrite to replace it)"]
    # Another process (not magn) writes the output while this one computes: kept.
    _img(tmp_path / "b.png", (16, 16, 3))
    monkeypatch.setattr(Restorer, "restore", lambda self, image, **kw: (
        (tmp_path / "b_magn.png").write_bytes(b"theirs"), real(self, image, **kw))[1])
    res = _run(tmp_path / "b.png", "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 1 and "already exists" in _errors(res)[0]
    assert (tmp_path / "b_magn.png").read_bytes() == b"theirs"
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]


def test_overlap_more_than_half_the_tile_is_refused(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 3))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], "--tile", "32", "--overlap", "64")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "--overlap 64 is more than half of --tile 32 (at most 16" in _said(res)
    assert os.listdir(tmp_path) == ["a.png"]
    assert _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], "--tile", "32", "--overlap", "16",
                "-q").exit_code == 0


def test_long_error_lines_are_not_wrapped(tmp_path, ckpt):
    folder = tmp_path / ("a-long-folder-name-" * 6)
    folder.mkdir()
    path = hostile_kit.bomb(folder / "bomb.png")
    res = _run(path, "-t", "denoise", "-w", ckpt[3], "-q")
    assert res.exit_code == 1 and len(_errors(res)) == 1 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {path}: too large")


class _RunsCode:
    """Pickles to a call of exec: what a hostile checkpoint does when it is loaded."""
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_blocked_pickle_never_suggests_the_unsafe_option(tmp_path, ckpt, legacy):
    import torch
    _img(tmp_path / "a.png", (12, 12, 3))
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": _RunsCode(marker)}, evil,
               _use_new_zipfile_serialization=not legacy)
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", evil, "-q")
    assert res.exit_code == 1 and not marker.exists()
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: {evil}: not a plain state_dict (loading it would call Python code: exec)")
    assert "safetensors" in line and "weights_only" not in line and "trust" not in line


@pytest.mark.parametrize("content, words", [
    (b"hello, I am a text file\n", "not a PyTorch checkpoint (it looks like text)"),
    (b"", "empty file (0 bytes), not a PyTorch checkpoint"),
    (b"\x00\x01\x02binary", "not a PyTorch checkpoint: neither the zip archive"),
    (b"\x80\x04K\x01.", "not a readable PyTorch checkpoint"),   # a pickle of the number 1
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is_not(tmp_path, ckpt, content, words):
    _img(tmp_path / "a.png", (12, 12, 3))
    bad = tmp_path / "x.pth"
    bad.write_bytes(content)
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", bad, "-q")
    assert res.exit_code == 1
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: {bad}: {words}"), line
    assert "pop from empty list" not in line and "weights_only" not in line


# --------------------------------------------------------------------------- issue 18
# Progress on long work: tiles, MP/s and ETAs on a terminal; plain lines elsewhere.
def _terminal(monkeypatch, width=120):
    """Make `magn restore` draw its progress as on a terminal, into a buffer."""
    import io
    from rich.console import Console
    from magncli.cli import common
    buffer = io.StringIO()
    monkeypatch.setattr(common, "console", Console(file=buffer, force_terminal=True, width=width))
    return buffer


@pytest.mark.slow
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_terminal_shows_tiles_rates_and_etas(tmp_path, ckpt, monkeypatch, jobs):
    buffer = _terminal(monkeypatch)
    for name in ("a.png", "b.png"):
        _img(tmp_path / name, (100, 150, 3))           # 2 x 3 tiles of 64 with overlap 16
    res = _run(tmp_path / "a.png", tmp_path / "b.png", "-t", "denoise", "-w", ckpt[3], "--jobs", jobs)
    assert res.exit_code == 0, res.output
    drawn = buffer.getvalue()
    assert "\x1b[" in drawn                              # a live display was drawn
    assert "/6 tiles" in drawn and "MP/s" in drawn and "ETA" in drawn and "/2 images" in drawn
    assert "2 of 2 image(s) restored" in drawn


@pytest.mark.slow
def test_a_terminal_with_json_keeps_the_plain_bar(tmp_path, ckpt, monkeypatch):
    buffer = _terminal(monkeypatch)
    _img(tmp_path / "a.png", (100, 150, 3))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[3], "--json")
    assert res.exit_code == 0 and len(res.stdout.splitlines()) == 1
    assert "tiles" not in buffer.getvalue() and "MP/s" not in buffer.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--json"], ["--jobs", "2"]])
def test_a_stderr_that_is_not_a_terminal_gets_plain_lines(tmp_path, ckpt, extra):
    for name in ("a.png", "b.png"):
        _img(tmp_path / name, (100, 150, 3))
    res = subprocess.run([sys.executable, "-m", "magncli", "restore", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                          "-t", "denoise", "-w", str(ckpt[3]), *extra], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stderr + res.stdout and "\r" not in res.stderr + res.stdout
    lines = res.stderr.splitlines()
    assert [line.split(" -> ")[0] for line in lines[:2]] == [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert len(lines) == 3 and lines[2].startswith("2 of 2 image(s) restored")


def test_progress_figures():
    from magncli.cli.restore import _clock, image_figures, run_figures
    assert image_figures(12, 48, 2.0, 6.0) == "12/48 tiles 0.08 MP/s ETA 0:00:18"     # its own pace
    assert image_figures(12, 48, 2.0, 6.0, rate=0.05) == "12/48 tiles 0.05 MP/s ETA 0:00:30"   # the run's
    assert image_figures(0, 48, 2.0, 6.0) == "0/48 tiles ? MP/s ETA -:--:--"
    assert run_figures(3.0, 12.0, 0.2) == "3.0/12.0 MP 0.20 MP/s ETA 0:00:45"
    assert run_figures(0.0, 0.5, None) == "0.00/0.50 MP ? MP/s ETA -:--:--"
    assert run_figures(300.0, 4567.8, 123.456) == "300.0/4567.8 MP 123 MP/s ETA 0:00:35"
    assert _clock(3725) == "1:02:05" and _clock(None) == "-:--:--"


def test_the_run_counts_megapixels_and_drops_those_of_a_failed_image(tmp_path, monkeypatch):
    from magncli.cli.restore import _Display
    from magncli.restore import Job, Outcome
    _terminal(monkeypatch)
    _img(tmp_path / "a.png", (1000, 500, 3))          # 0.5 MP
    _img(tmp_path / "b.png", (500, 500, 3))           # 0.25 MP
    jobs = [Job(tmp_path / "a.png", tmp_path / "a_magn.png"), Job(tmp_path / "b.png", tmp_path / "b_magn.png"),
            Job(tmp_path / "c.png", None, "c.png: no such file")]
    display = _Display(jobs, quiet=False, detailed=True)
    run = display.progress.tasks[0]
    assert run.total == pytest.approx(0.75)
    display.tiles(0, 0, 10)
    display.tiles(0, 4, 10)
    display.tiles(1, 5, 10)
    assert run.completed == pytest.approx(0.5 * 0.4 + 0.25 * 0.5)
    assert len(display.progress.tasks) == 3            # the run and two images in work
    display.finished(Outcome(1, jobs[1], error=MagnError("broken")))
    display.finished(Outcome(2, jobs[2], error=MagnError("no such file")))
    assert run.total == pytest.approx(0.5) and run.completed == pytest.approx(0.2)
    display.finished(Outcome(0, jobs[0], record={}))
    assert run.completed == pytest.approx(run.total) and len(display.progress.tasks) == 1
    assert run.description == "3/3 images"



def test_a_model_that_breaks_down_on_an_image_writes_nothing(tmp_path, ckpt):
    """An output far outside 0-1 is a network that broke down (docs/lab-notebook.md,
    "Breakdowns"): refused in one line, not clipped into a ruined file. The same model
    with a sane output writes its file."""
    import torch
    model = random_magn(in_channels=3, **TINY)
    with torch.no_grad():                     # output = input + tail bias, exactly
        model.tail.weight.zero_()
        model.tail.bias.fill_(1.2)            # up to 2.2 where the input is near 1
    broken = save_checkpoint(tmp_path / "broken.safetensors", model)
    _img(tmp_path / "a.png", (16, 16, 3))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", broken)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "broke down on this image" in res.output and "refused rather than clipped" in res.output
    assert not [f for f in os.listdir(tmp_path) if f.startswith("a_magn")]
    with torch.no_grad():
        model.tail.bias.fill_(0.8)            # up to 1.8: an overshoot within the margin
    sane = save_checkpoint(tmp_path / "sane.safetensors", model)
    assert _run(tmp_path / "a.png", "-t", "denoise", "-w", sane, "-q").exit_code == 0
    assert (tmp_path / "a_magn.png").is_file()


def test_an_output_folder_inside_the_input_tree_is_never_restored_again(tmp_path, ckpt):
    """Issue #37: with `-r`, `-o` inside the input and an empty suffix, every rerun
    restored the last run's outputs (out/x.png -> out/out/x.png, and so on)."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    _img(src / "x.png", (16, 16, 1))
    _img(src / "sub" / "y.png", (12, 20, 1))
    args = (src, "-r", "-t", "denoise", "-w", ckpt[1], "-o", src / "out", "--suffix", "", "-q")
    assert _run(*args).exit_code == 0
    again = _run(*args, "--overwrite")
    assert again.exit_code == 0, again.output
    written = sorted(str(p.relative_to(src)) for p in src.rglob("*.png"))
    assert written == ["out/sub/y.png", "out/x.png", "sub/y.png", "x.png"]


def test_a_fifo_is_named_as_what_it_is(tmp_path, ckpt):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    res = _run(fifo, "-t", "denoise", "-w", ckpt[1], "-q")
    assert res.exit_code != 0 and "not a regular file" in res.output and "no such file" not in res.output


def _rewritten(path, out, tensors=None, config=None):
    """The checkpoint `path` saved again as `out` with its tensors and/or config changed."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["magn"])
    if tensors:
        state = {k: tensors(v) for k, v in state.items()}
    if config:
        meta["config"].update(config)
    save_file(state, str(out), metadata={"magn": json.dumps(meta)})
    return out


def test_a_checkpoint_of_integer_tensors_is_refused_not_run_as_the_identity(tmp_path, ckpt):
    """Issue #37: integer weights were cast to float (mostly zeros) and the image came
    back unchanged, with exit 0."""
    _img(tmp_path / "a.png", (12, 12, 1))
    bad = _rewritten(ckpt[1], tmp_path / "int.safetensors", tensors=lambda v: v.to(torch.int32))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", bad, "-q")
    assert res.exit_code == 1 and not (tmp_path / "a_magn.png").exists()
    (line,) = res.stderr.splitlines()
    assert str(bad) in line and "not floating-point" in line and "int32" in line


@pytest.mark.parametrize("config, words", [
    ({"heads": 0}, "heads of magn must be an integer >= 1, not 0"),
    ({"n_feats": "8"}, "n_feats of magn must be an integer >= 1, not '8'"),
    ({"patch_stride": 0}, "patch_stride of magn must be an integer >= 1, not 0"),
    ({"global_graph": 1}, "global_graph of magn must be true or false, not 1"),
])
def test_impossible_config_values_in_a_checkpoint_name_the_file_not_the_image(tmp_path, ckpt, config, words):
    """Issue #37: a TypeError or ZeroDivisionError, said as if the image were at fault."""
    _img(tmp_path / "a.png", (12, 12, 1))
    bad = _rewritten(ckpt[1], tmp_path / "cfg.safetensors", config=config)
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", bad, "-q")
    assert res.exit_code == 1
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: {bad}: ") and words in line, line
    assert "Error" not in line


def _tiff(path, array):
    import tifffile
    tifffile.imwrite(path, array, photometric="rgb" if array.ndim == 3 else "minisblack")
    return path


@pytest.mark.parametrize("array, words", [
    (np.full((12, 12), np.nan, np.float32), "holds NaN or infinite values"),
    (np.full((12, 12, 3), np.inf, np.float32), "holds NaN or infinite values"),
    (np.full((12, 12), 70000, np.int32), "holds int32 samples"),
    (np.full((12, 12), -5, np.int16), "holds int16 samples"),
    (np.full((12, 12), 0.5, np.float16), "is a 16-bit float TIFF, which magn cannot read"),
])
def test_tiffs_no_model_can_restore_are_said_as_such(tmp_path, ckpt, array, words, capfd):
    """Issue #37: these were reported as "the model broke down, please report the
    weights"; a float16 TIFF as OpenCV's multi-line error and "may be truncated"."""
    path = _tiff(tmp_path / "a.tif", array)
    channels = 1 if array.ndim == 2 else 3
    res = _run(path, "-t", "denoise", "-w", ckpt[channels], "-q")
    assert res.exit_code == 1
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"error: {path}: ") and words in line, line
    assert "broke down" not in line and "truncated" not in line
    assert capfd.readouterr().err == ""                  # nothing from OpenCV's own logging
    assert not [f for f in os.listdir(tmp_path) if f.startswith("a_magn")]


def test_a_full_color_photo_given_to_demosaic_is_said_to_be_no_mosaic(tmp_path, ckpt):
    _img(tmp_path / "photo.png", (16, 16, 3))
    res = _run(tmp_path / "photo.png", "-t", "demosaic", "-w", ckpt[3], "-q")
    assert res.exit_code == 1
    (line,) = res.stderr.splitlines()
    assert "is a full-color image, not a Bayer mosaic" in line and "broke down" not in line


def test_an_output_folder_that_is_a_file_is_one_line_before_any_image(tmp_path, ckpt):
    """Issue #37: `-o FILE` said "File exists" for every image."""
    _img(tmp_path / "a.png", (12, 12, 1))
    (tmp_path / "out.png").write_bytes(b"mine")
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[1], "-o", tmp_path / "out.png", "-q")
    assert res.exit_code == 1 and isinstance(res.exception, MagnError)
    assert "is a file" in str(res.exception) and "--output" in cli_message(res.exception)
    assert (tmp_path / "out.png").read_bytes() == b"mine"


def test_sigterm_releases_every_claim_and_says_what_was_done(tmp_path, ckpt):
    """Issue #37: SIGTERM ended the run at once, leaving `.magn-lock` files and no summary."""
    import signal
    import time
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(120):
        _img(folder / f"{i:03d}.png", (96, 96, 1))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "magncli", "restore", str(folder), "-t", "denoise",
                             "-w", str(ckpt[1]), "-o", str(out), "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True, env=env)
    assert "->" in proc.stderr.readline()               # the first image is written
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped: " in err and "of 120 image(s) restored" in err and err.rstrip().endswith("magn: terminated")
    assert "Traceback" not in err
    left = [p for p in out.iterdir() if p.name.startswith(".")]
    assert left == [] and 0 < len(list(out.iterdir())) < 120


# --------------------------------------------------------------------------- issue 36
def test_skip_existing_counts_an_existing_output_as_skipped_not_failed(tmp_path, ckpt):
    """Issue #36: rerunning a folder said "0 of 9 image(s) restored, 9 failed" and exited 1."""
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        _img(folder / f"{i}.png", (16, 16, 1))
    assert _run(folder / "0.png", "-t", "denoise", "-w", ckpt[1], "-o", out, "-q").exit_code == 0
    restored_before = (out / "0_magn.png").read_bytes()
    (out / "2_magn.png").write_bytes(b"mine")

    res = _run(folder, "-t", "denoise", "-w", ckpt[1], "-o", out, "--skip-existing", "--json")
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r.get("skipped", False) for r in records] == [True, False, True]
    assert records[0] == {"input": str(folder / "0.png"), "output": str(out / "0_magn.png"),
                          "skipped": True, "reason": "the output exists"}
    assert records[1]["output"] == str(out / "1_magn.png") and (out / "1_magn.png").is_file()
    assert (out / "0_magn.png").read_bytes() == restored_before and (out / "2_magn.png").read_bytes() == b"mine"
    lines = res.stderr.splitlines()
    assert lines[0] == f"{folder / '0.png'} -> {out / '0_magn.png'} (skipped: the output exists)"
    assert lines[-1].startswith("1 of 3 image(s) restored, 2 skipped in ") and "failed" not in res.stderr

    again = _run(folder, "-t", "denoise", "-w", ckpt[1], "-o", out, "-q")     # without it: failures
    assert again.exit_code == 1 and again.stderr.count("already exists") == 3


def test_skip_existing_and_overwrite_together_are_one_line(tmp_path, ckpt):
    _img(tmp_path / "a.png", (16, 16, 1))
    res = _run(tmp_path / "a.png", "-t", "denoise", "-w", ckpt[1], "--overwrite", "--skip-existing")
    message = user_error(res, "--overwrite", "--skip-existing")
    assert "=True" not in message and not (tmp_path / "a_magn.png").exists()


@pytest.mark.parametrize("signum, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_run_says_what_is_left_and_the_command_that_finishes_it(tmp_path, ckpt, signum, code):
    """Issue #36: Ctrl-C or SIGTERM: a line of what finished and what did not, the command
    to continue (the same with --skip-existing), no claims or temporaries left, 130/143;
    and that command restores exactly the rest."""
    import shlex
    import signal
    folder, out, N = tmp_path / "in", tmp_path / "out", 16
    folder.mkdir()
    for i in range(N):
        _img(folder / f"{i:03d}.png", (32, 32, 1))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    args = ["restore", str(folder), "-t", "denoise", "-w", str(ckpt[1]), "-o", str(out), "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "magncli", *args], stderr=subprocess.PIPE, text=True, env=env,
                            # Ctrl-C as at a terminal, even where this test runs with SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "->" in proc.stderr.readline()               # the first image is written
    proc.send_signal(getattr(signal, signum))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    written = len(list(out.iterdir()))
    assert 0 < written < N
    (stop,) = [line for line in err.splitlines() if line.startswith("stopped: ")]
    assert stop.startswith(f"stopped: {written} of {N} image(s) restored, {N - written} not done, in ")
    command = shlex.split(stop.split("; to continue: ")[1])
    assert command == ["magn", *args, "--skip-existing"]

    rest = subprocess.run([sys.executable, "-m", "magncli", *command[1:]], capture_output=True, text=True, env=env,
                          timeout=300)
    assert rest.returncode == 0, rest.stderr
    assert rest.stderr.splitlines()[-1].startswith(f"{N - written} of {N} image(s) restored, {written} skipped in ")
    assert len(list(out.iterdir())) == N


def _rows(display):
    """The progress rows as the terminal (the stderr console _terminal made) shows them, as text."""
    from rich.text import Text
    from magncli.cli import common
    common.console.file.truncate(0)
    common.console.file.seek(0)
    common.console.print(display.progress.get_renderable())
    return [Text.from_ansi(line).plain for line in common.console.file.getvalue().splitlines()]


def test_with_one_image_the_run_and_the_image_say_the_same_time_left(tmp_path, monkeypatch):
    """Issue #36: one image, and its row said 3:05 left where the run's said 4:53 (the run's
    rate counted the model's loading, the image's did not). Here the model loads for 20 s,
    then 20% of the image takes 20 s: 80 s are left, as both rows must say."""
    import re
    import time as time_module
    from magncli.cli.restore import _Display
    from magncli.restore import Job
    _terminal(monkeypatch)
    _img(tmp_path / "a.png", (1000, 500, 3))          # 0.5 MP
    now = [1000.0]
    monkeypatch.setattr(time_module, "monotonic", lambda: now[0])
    display = _Display([Job(tmp_path / "a.png", tmp_path / "a_magn.png")], quiet=False, detailed=True)
    for t, done in ((1020.0, 0), (1030.0, 10), (1040.0, 20)):
        now[0] = t
        display.tiles(0, done, 100)
    run, image = _rows(display)
    assert "20/100 tiles" in image and "0.10/0.50 MP" in run
    assert re.search(r"ETA (\S+)", run)[1] == re.search(r"ETA (\S+)", image)[1] == "0:01:20"


@pytest.mark.parametrize("ensemble", [False, True])
def test_the_progress_rows_fit_80_columns(tmp_path, monkeypatch, ensemble):
    """Issue #36: on an 80-column terminal the rows wrapped, the figures over several lines."""
    from magncli.cli.restore import _Display
    from magncli.restore import Job
    _terminal(monkeypatch, width=80)
    names = ["DSC_20240612_a_rather_long_name_of_a_camera_file_edited_final_v2.png", "b.png"]
    jobs = [Job(tmp_path / name, tmp_path / f"{name}_magn.png") for name in names]
    display = _Display(jobs, quiet=False, detailed=True, ensemble=ensemble)
    display._mp = [123.4, 4567.8]                  # a run of huge images, many tiles
    display._total_mp = sum(display._mp)
    display.tiles(0, 0, 123456)
    display.tiles(0, 12345, 123456)
    display.tiles(1, 0, 99999)
    rows = _rows(display)
    assert len(rows) == 3, rows                         # one line per row: nothing wrapped
    assert all(len(row) <= 80 for row in rows), rows
    assert rows[0].startswith("0/2 images") and "ETA" in rows[0]
    assert rows[1].startswith("  DSC_2024") and "…" in rows[1] and "12345/123456" in rows[1] and "ETA" in rows[1]
    assert rows[2].startswith("  b.png ") and "0/99999" in rows[2] and "ETA" in rows[2]


def _jpeg(path, px, **save):
    from PIL import Image as PILImage
    PILImage.fromarray(px.squeeze()).save(path, "JPEG", **save)
    return read_image(path)


def test_a_jpeg_the_default_model_cannot_improve_comes_back_unchanged_unless_forced(tmp_path):
    """#35: q100 4:4:4 is made worse by the published models (tasks.JPEG_GUARD): the output
    is the decoded input, the line and the record say why; --force restores it."""
    from magncli.tasks import JPEG_GUARD
    assert JPEG_GUARD["4:4:4"] <= 100
    px, _ = _img(tmp_path / "a.png", (40, 48, 3))
    decoded = _jpeg(tmp_path / "a.jpg", px, quality=100, subsampling=0).pixels
    res = _run(tmp_path / "a.jpg", "-t", "dejpeg", "--json", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["subsampling"] == "4:4:4" and record["quality"] == 100
    assert record["unchanged"] == "q100 4:4:4: the model does not improve such files" and "model" not in record
    assert np.array_equal(read_image(tmp_path / "out" / "a_magn.png").pixels, decoded)
    line = _run(tmp_path / "a.jpg", "-t", "dejpeg", "-o", tmp_path / "line")
    assert "unchanged (q100 4:4:4: the model does not improve such files; --force restores it)" in \
        " ".join(line.stderr.split())
    forced = _run(tmp_path / "a.jpg", "-t", "dejpeg", "--json", "--force", "-o", tmp_path / "forced")
    assert forced.exit_code == 0, forced.output
    assert "unchanged" not in json.loads(forced.stdout)
    assert not np.array_equal(read_image(tmp_path / "forced" / "a_magn.png").pixels, decoded)


@pytest.mark.parametrize("save, subsampling", [({"quality": 50, "subsampling": 0}, "4:4:4"),
                                               ({"quality": 50, "subsampling": 2}, "4:2:0")])
def test_a_low_quality_jpeg_is_restored_and_its_subsampling_said(tmp_path, save, subsampling):
    px, _ = _img(tmp_path / "a.png", (40, 48, 3))
    decoded = _jpeg(tmp_path / "a.jpg", px, **save).pixels
    res = _run(tmp_path / "a.jpg", "-t", "dejpeg", "--json", "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["subsampling"] == subsampling and "unchanged" not in record and record["model"]
    assert not np.array_equal(read_image(tmp_path / "out" / "a_magn.png").pixels, decoded)
    line = _run(tmp_path / "a.jpg", "-t", "dejpeg", "-o", tmp_path / "line")
    assert f"quality 50 from the JPEG tables, subsampling {subsampling}" in " ".join(line.stderr.split())


def test_the_guard_is_for_the_published_models_and_jpegs_only(tmp_path, ckpt):
    """Other weights were not measured: they run. A PNG states no quality: never guarded."""
    px, _ = _img(tmp_path / "a.png", (40, 48, 3))
    _jpeg(tmp_path / "a.jpg", px, quality=100, subsampling=0)
    given = _run(tmp_path / "a.jpg", "-t", "dejpeg", "-w", ckpt[3], "--json", "-o", tmp_path / "given")
    assert given.exit_code == 0 and "unchanged" not in json.loads(given.stdout)
    png = _run(tmp_path / "a.png", "-t", "dejpeg", "--quality", "100", "--json", "-o", tmp_path / "png")
    record = json.loads(png.stdout)
    assert png.exit_code == 0 and "unchanged" not in record and "subsampling" not in record


def test_a_gray_jpeg_says_it_has_no_subsampling(tmp_path, ckpt):
    px, _ = _img(tmp_path / "a.png", (40, 48, 1))
    _jpeg(tmp_path / "a.jpg", px, quality=40)
    res = _run(tmp_path / "a.jpg", "-t", "dejpeg", "-w", ckpt[1], "--json", "-o", tmp_path / "out")
    assert res.exit_code == 0 and json.loads(res.stdout)["subsampling"] == "none"
