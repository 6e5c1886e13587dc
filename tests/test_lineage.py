"""Lineage recipes (train/recipes/NAME.toml): every published checkpoint's recipe reads,
and `magn train --recipe` replays a tiny one end to end, span change included."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from magncli.checkpoints import read_checkpoint
from magncli.cli.app import app
from magncli.errors import MagnError
from magncli.runs.folder import CONFIG_FILE, EXPORT_FILE, LOG_FILE, read_log
from magncli.training.config import read_recipe
from magncli.training.lineage import find_recipe, read_lineage
from magncli.weights import file_sha256, load_manifest

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_every_published_checkpoint_has_a_lineage_recipe_that_reads():
    manifest = load_manifest(REPO / "weights" / "manifest.json")
    for entry in manifest.entries:
        lineage = read_lineage(find_recipe(entry.name))
        assert lineage.checkpoint == entry.name and lineage.sha256 == entry.sha256
        first, last = lineage.stages[0], lineage.stages[-1]
        assert first.init_from is None                                 # it begins from scratch
        assert all(s.init_from == "previous" for s in lineage.stages[1:])
        assert last.config.task == entry.task and last.config.channels == entry.channels
        assert last.stop == entry.provenance["steps"]                   # exported where it was
        # Every stage validates on held-out training images, never a test set.
        assert all(s.config.val == "" and s.config.val_holdout > 0 for s in lineage.stages)


def _tiny_recipe(tmp_path: Path, data: Path) -> Path:
    (tmp_path / "tiny.toml").write_text(
        f'task = "denoise"\ndata = "{data}"\narch = "magn-s-local"\nchannels = 1\nsigma = 25\n'
        'batch = 2\npatch = 16\nsteps = 4\nlr = 2e-3\nschedule = "cosine"\nwarmup_steps = 1\nval_every = 2\n'
        'val_holdout = 2\nval_crop = 32\nckpt_every = 2\nlog_every = 1\nworkers = 0\nthreads = 1\n'
        '[model]\nn_feats = 8\nn_resblocks = 1\nn_graphblocks = 1\npatch_channels = 4\npatch_embed = 8\n')
    recipe = tmp_path / "tiny-lineage.toml"
    recipe.write_text('checkpoint = "tiny"\n\n'
                      '[[stage]]\nname = "first"\nconfig = ["tiny.toml"]\nexport = "best"\n\n'
                      '[[stage]]\nname = "second"\nconfig = ["tiny.toml"]\nset = { lr = 1e-3, steps = 6 }\n'
                      'init_from = "previous"\nstop = 5\n'
                      '[[stage.span]]\nat = 2\nsteps = 8\n')
    return recipe


def test_a_tiny_recipe_replays_end_to_end_and_a_second_call_trains_nothing(tmp_path, data_root):
    data = tmp_path / "train"
    data.mkdir()
    for src in sorted((data_root / "Train400").glob("*.png"))[:6]:
        (data / src.name).symlink_to(src)
    recipe = _tiny_recipe(tmp_path, data)
    out = tmp_path / "replay"
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    first, second = out / "1-first", out / "2-second"
    # Stage 1: its best held-out validation, exported and marked done.
    _, meta = read_checkpoint(first / EXPORT_FILE)
    scores = {r["step"]: r["val_psnr"] for r in read_log(first / LOG_FILE) if "val_psnr" in r}
    assert meta["step"] == max(scores, key=scores.get) and meta["stage_done"] == 4
    # Stage 2: began from stage 1's export (named by its run, with its sha256), changed its
    # span at step 2 as recorded, and was exported at its stop.
    log = read_log(second / LOG_FILE)
    start = next(r for r in log if r.get("event") == "start")
    assert start["warm_start"]["weights"] == "1-first/export.safetensors"
    assert start["warm_start"]["sha256"] == file_sha256(first / EXPORT_FILE)
    resume = next(r for r in log if r.get("event") == "resume")
    assert resume["step"] == 2 and resume["steps"] == 8
    assert read_recipe(second / CONFIG_FILE)["steps"] == 8 and read_recipe(second / CONFIG_FILE)["lr"] == 1e-3
    _, meta = read_checkpoint(second / EXPORT_FILE)
    assert meta["step"] == 5 and meta["stage_done"] == 5 and meta["provenance"]["planned_steps"] == 8
    # Again: both stages are done, nothing is trained or written.
    logs = [(d / LOG_FILE).read_text() for d in (first, second)]
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--out", str(out)])
    assert result.exit_code == 0 and "done, step 4" in result.output and "done, step 5" in result.output
    assert [(d / LOG_FILE).read_text() for d in (first, second)] == logs


def test_recipe_mistakes_are_one_line(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('[[stage]]\nname = "a"\nconfig = []\ninit_from = "previous"\n')
    with pytest.raises(MagnError, match="no stage before it"):
        read_lineage(recipe)
    with pytest.raises(MagnError, match="no recipe 'nope'"):
        find_recipe("nope")
    # A lineage recipe given to --config: told to replay it.
    with pytest.raises(MagnError, match="--recipe bad"):
        read_recipe(recipe)
    result = runner.invoke(app, ["train", "--recipe", str(recipe), "--out", str(tmp_path / "r"), "--lr", "1"])
    assert isinstance(result.exception, MagnError) and "drop lr" in str(result.exception)
