"""`magn weights list/download/verify/path/add`, through Typer's CliRunner."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from magncli.cli.app import app, main
from magncli.cli.common import cli_message
from magncli.errors import MagnError
from magncli.weights import load_manifest

from weights_testkit import (TINY_ARCH, make_entry, server, sha256_of, tiny_bytes,  # noqa: F401
                             tiny_checkpoint, wenv)

runner = CliRunner()
NAME = "tiny-s25"
FILE = f"{NAME}.safetensors"


def magn(*args):
    return runner.invoke(app, ["weights", *args])


@pytest.fixture
def served(server, wenv, tiny_bytes):
    """One checkpoint in the manifest, served by the local server."""
    server.state.files[f"/ckpt/{FILE}"] = tiny_bytes
    wenv.write_manifest([make_entry(NAME, tiny_bytes, [server.url(f"/ckpt/{FILE}")], default=True)])
    return server


def test_list_empty_manifest(wenv):
    result = magn("list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    result = magn("list")
    assert result.exit_code == 0 and "no pretrained checkpoints" in result.stderr


def test_list_shows_status(served, wenv, tiny_bytes):
    rows = json.loads(magn("list", "--json").stdout)
    assert [(r["name"], r["status"], r["size"]) for r in rows] == [(NAME, "remote", len(tiny_bytes))]
    assert f"remote ({len(tiny_bytes) / 1e6:.1f} MB)" in magn("list").stdout    # what a download costs
    assert magn("download", NAME, "--quiet").exit_code == 0
    rows = json.loads(magn("list", "--json").stdout)
    assert rows[0]["status"] == "cached" and rows[0]["path"] == str(wenv.cache / FILE)
    table = magn("list")
    assert table.exit_code == 0 and NAME in table.stdout and "cached" in table.stdout


def test_an_80_column_table_shows_every_name_whole(monkeypatch):
    """The names of the shipped manifest, the longest there are, are what a user types
    next: a narrow terminal wraps the other columns, never a name."""
    from magncli.cli import common
    monkeypatch.setattr(common.stdout_console, "width", 80)
    table = magn("list")
    assert table.exit_code == 0 and max(map(len, table.stdout.splitlines())) <= 80
    for entry in load_manifest().entries:
        assert f" {entry.name} " in table.stdout


def test_download_and_path(served, wenv):
    missing = magn("path", NAME, "--json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout) == {"name": NAME, "path": str(wenv.cache / FILE), "exists": False,
                                          "sha256": load_manifest().get(NAME).sha256,
                                          "size": load_manifest().get(NAME).size}
    offline = magn("download", NAME, "--offline", "--json")
    assert offline.exit_code == 1 and "not available offline" in json.loads(offline.stdout)[0]["error"]
    assert served.state.hits == 0

    result = magn("download", NAME, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"name": NAME, "ok": True, "path": str(wenv.cache / FILE), "error": None}]
    result = magn("path", NAME)
    assert result.exit_code == 0 and result.stdout.strip() == str(wenv.cache / FILE)
    assert json.loads(magn("path", NAME, "--json").stdout)["exists"] is True
    assert served.state.hits == 1


def test_download_needs_names_or_all(wenv):
    assert isinstance(magn("download").exception, MagnError)
    assert isinstance(magn("download", "--all").exception, MagnError)   # nothing listed yet
    assert isinstance(magn("download", "nope").exception, MagnError)


def test_verify_detects_tampered_cached_file(served, wenv):
    assert magn("download", NAME, "--quiet").exit_code == 0
    ok = magn("verify", "--json")
    assert ok.exit_code == 0 and [r["ok"] for r in json.loads(ok.stdout)] == [True]

    cached = wenv.cache / FILE
    data = bytearray(cached.read_bytes())
    data[-1] ^= 0xFF
    stat = cached.stat()
    cached.write_bytes(bytes(data))
    # Same size and mtime as before: the sidecar is fooled, `verify` is not.
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    bad = magn("verify")
    assert bad.exit_code == 1
    assert "MISMATCH" in bad.stdout and str(cached) in bad.stderr
    assert json.loads(magn("verify", "--json").stdout)[0]["ok"] is False


def test_verify_checks_shipped_files(wenv, tiny_bytes):
    wenv.write_manifest([make_entry(NAME, tiny_bytes)])
    (wenv.manifest_dir / FILE).write_bytes(tiny_bytes[:-1] + b"\0")
    result = magn("verify", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)[0]["where"] == "shipped"


def test_add_checkpoint(wenv, tiny_checkpoint, tiny_bytes):
    result = magn("add", str(tiny_checkpoint), "--name", "tiny-blind", "--task", "denoise",
                  "--levels", "0-55", "--url", "https://example.invalid/tiny.safetensors", "--default")
    assert result.exit_code == 0, result.output
    entry = load_manifest().get("tiny-blind")
    assert (entry.arch, entry.config, entry.channels) == (TINY_ARCH, {"in_channels": 1, "n_feats": 16}, 1)
    assert entry.level_range == (0, 55) and entry.default
    assert (entry.sha256, entry.size) == (sha256_of(tiny_bytes), len(tiny_bytes))
    assert (wenv.manifest_dir / tiny_checkpoint.name).read_bytes() == tiny_bytes
    assert json.loads(magn("list", "--json").stdout)[0]["status"] == "shipped"

    again = magn("add", str(tiny_checkpoint), "--name", "tiny-blind", "--task", "denoise", "--levels", "25")
    assert isinstance(again.exception, MagnError) and "already lists" in str(again.exception)


def test_add_without_copy_and_bad_levels(wenv, tiny_checkpoint, tmp_path):
    other = tmp_path / "other.safetensors"
    shutil.copyfile(tiny_checkpoint, other)
    result = magn("add", str(other), "--name", "other", "--task", "dejpeg", "--channels", "1",
                  "--levels", "10,20,30", "--no-copy")
    assert result.exit_code == 0, result.output
    assert load_manifest().get("other").levels == (10, 20, 30)
    assert not (wenv.manifest_dir / other.name).exists()

    before = wenv.manifest_path.read_text()
    for levels in ("abc", "40-10"):
        bad = magn("add", str(tiny_checkpoint), "--name", "x", "--task", "denoise", "--levels", levels)
        assert isinstance(bad.exception, MagnError)
    missing = magn("add", str(tiny_checkpoint), "--name", "x", "--task", "denoise")
    assert isinstance(missing.exception, MagnError) and "pass levels='25'" in str(missing.exception)
    assert "pass --levels '25'" in cli_message(missing.exception)
    assert wenv.manifest_path.read_text() == before          # refused without writing


def test_add_reads_task_and_levels_from_training_metadata(wenv, tmp_path):
    """`magn train` records what the model is for; `add` needs no --task/--levels then,
    and --levels still overrides the record."""
    from magncli.checkpoints import save_checkpoint
    from magncli.models.registry import build_model

    model = build_model(TINY_ARCH, in_channels=3, n_feats=16)
    blind = save_checkpoint(tmp_path / "blind.safetensors", model,
                            {"task": "dejpeg", "channels": 3, "quality_range": [10, 40]})
    listed = save_checkpoint(tmp_path / "listed.safetensors", model,
                             {"task": "denoise", "channels": 3, "sigma": 25})
    assert magn("add", str(blind), "--name", "jpeg").exit_code == 0
    assert magn("add", str(listed), "--name", "s25").exit_code == 0
    override = tmp_path / "override.safetensors"
    shutil.copyfile(listed, override)
    assert magn("add", str(override), "--name", "s15", "--levels", "15").exit_code == 0
    m = load_manifest()
    assert (m.get("jpeg").task, m.get("jpeg").channels, m.get("jpeg").level_range) == ("dejpeg", 3, (10, 40))
    assert (m.get("s25").task, m.get("s25").levels) == ("denoise", (25,))
    assert m.get("s15").levels == (15,)


def test_scores_recorded_from_eval_results(wenv, tiny_checkpoint, tmp_path):
    assert magn("add", str(tiny_checkpoint), "--name", NAME, "--task", "denoise", "--levels", "25").exit_code == 0
    rows = [{"model": m, "set": "Set12", "channels": "gray", "level": "sigma 25", "psnr": p,
             "ssim": 0.8, "n_images": 12, "degradation": {"task": "denoise", "sigma": 25},
             "command": "magn eval --task denoise --model tiny-s25 -o r.json"}
            for m, p in (("input", 20.2), (NAME, 29.512345))]
    results = tmp_path / "r.json"
    results.write_text(json.dumps(rows))
    result = magn("scores", NAME, str(results))
    assert result.exit_code == 0, result.output
    entry = load_manifest().get(NAME)
    assert entry.scores == ({"dataset": "Set12", "level": 25, "channels": "gray", "psnr": 29.5123,
                             "ssim": 0.8, "n_images": 12, "command": rows[1]["command"]},)
    assert entry.headline_score() == "29.51 dB Set12 sigma 25"

    before = wenv.manifest_path.read_text()
    results.write_text(json.dumps(rows[:1]))                 # no row of this checkpoint
    missing = magn("scores", NAME, str(results))
    assert isinstance(missing.exception, MagnError)
    assert "evaluate the checkpoint under its manifest name, tiny-s25" in str(missing.exception)
    results.write_text("{not json")
    assert isinstance(magn("scores", NAME, str(results)).exception, MagnError)
    assert wenv.manifest_path.read_text() == before


def test_library_parameters_are_shown_as_options_on_the_command_line(wenv, tiny_checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    """The library says "pass levels=..." (it is called from Python too); `magn` prints
    the option instead, both for an error that ends the command and for a failed image."""
    monkeypatch.setattr("sys.argv", ["magn", "weights", "add", str(tiny_checkpoint), "--name", "x",
                                     "--task", "denoise"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == ("magn: error: pass --levels '25', '15,25,50' or '0-55' "
                                               "(blind) for a denoise model")

    image = tmp_path / "gray.png"
    from PIL import Image
    Image.new("L", (8, 8)).save(image)
    result = runner.invoke(app, ["restore", str(image), "--task", "denoise", "-o", str(tmp_path / "out"),
                                 "--json", "--quiet"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == ("no pretrained denoise model for gray images yet; "
                                                  "pass --weights PATH")
    # Paths and other words that merely end in a parameter's name are left alone.
    assert cli_message("/runs/task=3/a.pt: my-weights=2") == "/runs/task=3/a.pt: my-weights=2"


def test_add_replaces_an_entry_and_deletes_its_file_or_publishes_a_newer_export(wenv, tmp_path):
    from magncli.checkpoints import save_checkpoint
    from magncli.models.registry import build_model

    def export(path, seed):
        import torch
        torch.manual_seed(seed)
        model = build_model(TINY_ARCH, in_channels=1, n_feats=16)
        return save_checkpoint(path, model, {"task": "denoise", "channels": 1, "sigma_range": [0, 75]})

    old = export(tmp_path / "old.safetensors", 0)
    assert magn("add", str(old), "--name", "old", "--default").exit_code == 0
    new = export(tmp_path / "new.safetensors", 1)
    result = magn("add", str(new), "--name", "new", "--default", "--replaces", "old")
    assert result.exit_code == 0, result.output
    assert [e.name for e in load_manifest().entries] == ["new"]
    assert not (wenv.manifest_dir / "old.safetensors").exists()              # no orphan file
    # A newer export of the same run, under the same name and file name.
    newer = tmp_path / "later" / "new.safetensors"
    newer.parent.mkdir()
    export(newer, 2)
    result = magn("add", str(newer), "--name", "new", "--default", "--replaces", "new")
    assert result.exit_code == 0, result.output
    assert (wenv.manifest_dir / "new.safetensors").read_bytes() == newer.read_bytes()
    assert load_manifest().get("new").sha256 == sha256_of(newer.read_bytes())
    # Replacing what is not there changes nothing.
    before = wenv.manifest_path.read_text()
    bad = magn("add", str(old), "--name", "x", "--replaces", "nope")
    assert isinstance(bad.exception, MagnError) and "nope" in str(bad.exception)
    assert wenv.manifest_path.read_text() == before


@pytest.mark.parametrize("change, words", [
    (lambda r: r.pop("psnr"), "psnr is None"),
    (lambda r: r.update(psnr="29.5"), "psnr is '29.5'"),
    (lambda r: r.update(ssim=float("nan")), "ssim is nan"),
    (lambda r: r.pop("set"), "no set name"),
    (lambda r: r.update(degradation=[25]), "degradation is not a table"),
    (lambda r: r.update(degradation={"task": "denoise", "sigma": float("nan")}), "level is nan"),
])
def test_malformed_result_rows_are_one_line_and_the_manifest_stays(wenv, tiny_checkpoint, tmp_path, change, words):
    """Issue #37: a row without psnr was a KeyError traceback; a NaN made the manifest
    invalid JSON."""
    assert magn("add", str(tiny_checkpoint), "--name", NAME, "--task", "denoise", "--levels", "25").exit_code == 0
    row = {"model": NAME, "set": "Set12", "channels": "gray", "psnr": 29.5, "ssim": 0.8, "n_images": 12,
           "degradation": {"task": "denoise", "sigma": 25}}
    change(row)
    results = tmp_path / "r.json"
    results.write_text(json.dumps([row]))
    before = wenv.manifest_path.read_text()
    result = magn("scores", NAME, str(results))
    assert isinstance(result.exception, MagnError), result.output
    assert words in str(result.exception) and str(results) in str(result.exception)
    assert wenv.manifest_path.read_text() == before


@pytest.mark.parametrize("task, levels, words", [
    ("denoise", "nan", "'nan' is not a finite number"),
    ("denoise", "15,inf", "'inf' is not a finite number"),
    ("dejpeg", "nan", "'nan' is not a finite number"),
    ("dejpeg", "0", "JPEG quality must be an integer from 1 to 100"),
])
def test_levels_that_are_not_finite_never_reach_the_manifest(wenv, tiny_checkpoint, task, levels, words):
    """Issue #37: `--levels nan` wrote NaN into manifest.json, which no JSON reader takes."""
    before = wenv.manifest_path.read_text()
    bad = magn("add", str(tiny_checkpoint), "--name", "x", "--task", task, "--levels", levels)
    assert isinstance(bad.exception, MagnError) and words in str(bad.exception), bad.output
    assert wenv.manifest_path.read_text() == before
    json.loads(wenv.manifest_path.read_text())
