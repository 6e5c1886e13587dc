"""magncli/restore.py: restore_files, several images at once in one process (`restore
--jobs N`, issue 18): the same bytes, input order, one model load, clean stops."""
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magncli.checkpoints import save_checkpoint
from magncli.cli.app import app
from magncli.errors import MagnError
from magncli.images import Image, read_image, write_image
from magncli.inference import InferenceOptions
from magn_testkit import TINY, random_magn
import hostile_kit

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


# --------------------------------------------------------------------------- --jobs
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(d / "tiny3.safetensors", random_magn(in_channels=3, **TINY))


@pytest.fixture
def threads():
    """torch's thread budget set to 2 for the test (so that --jobs 2 has one each), then
    put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def _photos(folder: Path, n=4, dtype=np.uint16, ext="png", channels=3) -> list:
    """n images of a few tiles each (tile 64), of different sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        shape = (72 + 8 * i, 88 - 4 * i, channels)
        px = rng.random(shape, dtype=np.float32) if dtype == np.float32 else \
            rng.integers(0, np.iinfo(dtype).max + 1, shape).astype(dtype)
        paths.append(folder / f"{i:02d}.{ext}")
        write_image(paths[-1], Image(px))
    return paths


def _run(*args):
    return runner.invoke(app, ["restore", *map(str, args)])


def _records(res):
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def _errors(res):
    return [line for line in res.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_jobs_2_writes_the_same_bytes_as_jobs_1_at_the_same_threads_per_image(tmp_path, ckpt, threads):
    _photos(tmp_path / "in")
    res2 = _run(tmp_path / "in", "-t", "denoise", "-w", ckpt, "-o", tmp_path / "j2", "--jobs", "2", "--json", "-q")
    assert res2.exit_code == 0, res2.output
    assert torch.get_num_threads() == 2                  # the split is undone after the run
    torch.set_num_threads(1)                             # what each of the two images had
    res1 = _run(tmp_path / "in", "-t", "denoise", "-w", ckpt, "-o", tmp_path / "j1", "--jobs", "1", "--json", "-q")
    assert res1.exit_code == 0, res1.output
    names = sorted(os.listdir(tmp_path / "j1"))
    assert names == sorted(os.listdir(tmp_path / "j2")) == [f"{i:02d}_magn.png" for i in range(4)]
    for name in names:     # 16-bit: any difference in the restored floats would show
        assert (tmp_path / "j1" / name).read_bytes() == (tmp_path / "j2" / name).read_bytes(), name
    # --json records in input order, whatever order the images finished in.
    assert [r["input"] for r in _records(res2)] == [r["input"] for r in _records(res1)] == \
        [str(tmp_path / "in" / f"{i:02d}.png") for i in range(4)]


@pytest.mark.slow
def test_jobs_2_against_jobs_1_with_all_the_threads(tmp_path, threads):
    # One image on 2 threads against two images on 1 thread each: torch's own results
    # depend on the thread count (reductions split differently), by up to 2.4e-5 on the
    # random test model and 6e-7 on the shipped denoiser; float TIFFs show the floats
    # (gray ones: magn cannot read back its own RGB float TIFFs yet).
    gray = save_checkpoint(tmp_path / "tiny1.safetensors", random_magn(in_channels=1, **TINY))
    _photos(tmp_path / "in", dtype=np.float32, ext="tif", channels=1)
    for jobs in ("1", "2"):
        res = _run(tmp_path / "in", "-t", "denoise", "-w", gray, "-o", tmp_path / f"j{jobs}", "--ext", "tif",
                   "--jobs", jobs, "-q")
        assert res.exit_code == 0, res.output
    for i in range(4):
        a = read_image(tmp_path / "j1" / f"{i:02d}_magn.tif").pixels
        b = read_image(tmp_path / "j2" / f"{i:02d}_magn.tif").pixels
        assert a.dtype == np.float32 and np.allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_bad_image_among_parallel_jobs_is_one_line_and_the_others_are_written(tmp_path, ckpt, threads):
    folder = tmp_path / "in"
    _photos(folder, n=3)
    (folder / "01b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    hostile_kit.bomb(folder / "02b.png")
    res = _run(folder, "-t", "denoise", "-w", ckpt, "-o", tmp_path / "out" / "sub", "--jobs", "2")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert sorted(os.listdir(tmp_path / "out" / "sub")) == ["00_magn.png", "01_magn.png", "02_magn.png"]
    assert [e.split(":")[1].strip() for e in _errors(res)] == [str(folder / "01b.png"), str(folder / "02b.png")]
    assert "3 of 5 image(s) restored" in res.stderr and "2 failed" in res.stderr
    lines = [line for line in res.stderr.splitlines() if " -> " in line or line.startswith("error:")]
    assert [line.split()[0 if " -> " in line else 1].rstrip(":") for line in lines] == \
        [str(folder / n) for n in ("00.png", "01.png", "01b.png", "02.png", "02b.png")]   # input order


@pytest.mark.parametrize("value", ["0", "-1"])
def test_jobs_below_1_is_one_line_before_any_image(tmp_path, ckpt, value):
    folder = tmp_path / "in"
    _photos(folder, n=2)
    res = subprocess.run([sys.executable, "-m", "magncli", "restore", str(folder), "-t", "denoise", "-w", str(ckpt),
                          "--jobs", value], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                             filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))))
    assert res.returncode == 1
    assert res.stderr == f"magn: error: --jobs must be >= 1 (got {value})\n"
    assert sorted(os.listdir(folder)) == ["00.png", "01.png"]


def test_jobs_above_1_are_for_the_cpu(tmp_path, ckpt, monkeypatch):
    from magncli.restore import Restorer, plan_jobs, restore_files
    _photos(tmp_path, n=2)
    restorer = Restorer(task="denoise", weights=str(ckpt))
    monkeypatch.setattr(InferenceOptions, "resolve", lambda self: (torch.device("cuda"), torch.float32))
    with pytest.raises(MagnError, match="on other devices pass workers=1"):
        next(restore_files(restorer, plan_jobs([str(tmp_path)]), workers=2))
    with pytest.raises(MagnError, match=r"workers must be >= 1 \(got 0\)"):
        next(restore_files(restorer, plan_jobs([str(tmp_path)]), workers=0))


@pytest.mark.slow
def test_threads_share_one_load_of_each_model(tmp_path, ckpt, threads, monkeypatch):
    from magncli.restore import Restorer, plan_jobs, restore_files
    _photos(tmp_path / "in", n=4)
    restorer = Restorer(task="denoise", weights=str(ckpt))
    real, loads, gate = Restorer._load, [], threading.Barrier(2, timeout=5)

    def slow_load(self, channels, level):
        loads.append(threading.current_thread().name)
        return real(self, channels, level)

    def both_start_together(path):     # the two threads ask for the model at the same time
        try:
            gate.wait()
        except threading.BrokenBarrierError:
            pass
        return read(path)

    from magncli import restore as restore_mod
    read = restore_mod.read_image
    monkeypatch.setattr(Restorer, "_load", slow_load)
    monkeypatch.setattr(restore_mod, "read_image", both_start_together)
    seen = []
    outcomes = list(restore_files(restorer, plan_jobs([str(tmp_path / "in")], out_dir=str(tmp_path / "out")),
                                  workers=2, progress=lambda i, done, total: seen.append((i, done, total))))
    assert sorted(o.index for o in outcomes) == [0, 1, 2, 3] and all(o.error is None for o in outcomes)
    assert len(loads) == 1 and loads[0].startswith("magn-restore")
    assert {i for i, _, _ in seen} == {0, 1, 2, 3}
    for index in range(4):      # each image's own calls, from its thread, end at its total
        done, total = [(d, t) for i, d, t in seen if i == index][-1]
        assert done == total > 0


@pytest.mark.slow
def test_stopping_early_leaves_no_claims_or_temporaries(tmp_path, ckpt, threads):
    from magncli.restore import Restorer, plan_jobs, restore_files
    _photos(tmp_path / "in", n=6, dtype=np.uint8)
    out = tmp_path / "out"
    outcomes = restore_files(Restorer(task="denoise", weights=str(ckpt)),
                             plan_jobs([str(tmp_path / "in")], out_dir=str(out)), workers=2)
    first = next(outcomes)
    outcomes.close()              # what Ctrl-C in the loop over them does
    assert first.error is None and Path(first.record["output"]).is_file()
    assert torch.get_num_threads() == 2
    assert not [p for p in out.iterdir() if p.name.startswith(".")]         # no .part, no .magn-lock
    for p in out.iterdir():                                                  # what was written is whole
        assert read_image(p).pixels.shape[2] == 3
    assert not [t for t in threading.enumerate() if t.name.startswith("magn-restore")]
