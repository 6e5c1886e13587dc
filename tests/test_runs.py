"""magncli.runs: a run folder read without training (export), and `magn weights publish`
end to end on a tiny run: export, manifest, validation curve, scores and card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from magncli.checkpoints import read_checkpoint
from magncli.cli.app import app
from magncli.errors import MagnError
from magncli.images import Image, read_image, write_image
from magncli.runs.export import export_run
from magncli.runs.folder import BEST_FILE, LOG_FILE, read_log
from magncli.runs.publish import eval_command, publish
from magncli.training.config import load_config
from magncli.training.loop import Trainer
from magncli.weights import file_sha256, load_manifest

TINY = dict(n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8)
NAME = "tiny-denoise-gray"
runner = CliRunner()


def _link(folder: Path, sources: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    for src in sorted(p for p in sources.iterdir() if p.suffix == ".png")[:n]:
        (folder / src.name).symlink_to(src)
    return folder


def _crops(folder: Path, sources: Path, n: int, size: int = 64) -> Path:
    """A test set of n size x size crops (one tile each: the scoring takes seconds)."""
    folder.mkdir(parents=True)
    for src in sorted(p for p in sources.iterdir() if p.suffix == ".png")[:n]:
        image = read_image(src)
        write_image(folder / src.name, Image(image.pixels[:size, :size]))
    return folder


@pytest.fixture
def tiny_run(tmp_path, data_root) -> Trainer:
    """6 steps of a tiny blind gray denoiser told sigma (a level map), validated on 2
    held-out images every 2 steps, one thread."""
    data = _link(tmp_path / "train", data_root / "Train400", 6)
    config = load_config([], dict(task="denoise", data=str(data), arch="magn-s-local", channels=1, sigma_range=[0, 50],
                                  model=dict(TINY, level_input=True), batch=2, patch=16, steps=6, lr=2e-3,
                                  schedule="constant", val_every=2, val_holdout=2, val_crop=32,
                                  ckpt_every=2, log_every=2, workers=0, threads=1))
    trainer = Trainer(config, tmp_path / "run", command="magn train --tiny")
    trainer.run()
    return trainer


def test_an_export_is_the_runs_ema_weights_in_fp16_with_their_provenance(tiny_run):
    run = tiny_run.run_dir
    log_before = (run / LOG_FILE).read_text()
    state, meta = read_checkpoint(export_run(run))
    ema = tiny_run.ema.model.state_dict()
    assert state.keys() == ema.keys()
    assert all(torch.equal(state[k], ema[k].half() if ema[k].is_floating_point() else ema[k]) for k in ema)
    scores = [r["val_psnr"] for r in read_log(run / LOG_FILE) if "val_psnr" in r]
    assert meta["step"] == 6 and meta["provenance"]["steps"] == 6 and meta["best_val_psnr"] == max(scores)
    assert meta["provenance"]["command"] == "magn train --tiny" and meta["task"] == "denoise"
    # The best validation: its own step and provenance, said in the notes.
    best_step = read_checkpoint(run / BEST_FILE)[1]["step"]
    _, best = read_checkpoint(export_run(run, best=True))
    assert best["step"] == best_step and best["provenance"]["steps"] == best_step
    assert best["provenance"]["notes"].endswith(f"at step {best_step} of a run then at step 6")
    assert "val_psnr" not in best and best["best_val_psnr"] == max(scores)
    assert (run / LOG_FILE).read_text() == log_before          # reading a run writes nothing of it


def _weights_folder(tmp_path: Path) -> Path:
    """An empty manifest with a README whose cards `publish` writes."""
    folder = tmp_path / "weights"
    (folder / "results").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"schema": 1, "base_url": None, "checkpoints": []}))
    (folder / "README.md").write_text("# Weights\n\nHand-written text.\n")
    return folder


def test_publish_exports_scores_and_cards_a_run_in_one_step(tiny_run, tmp_path, data_root):
    weights = _weights_folder(tmp_path)
    test_set = _crops(tmp_path / "two", data_root / "Set12", 2)
    # The results file of an earlier export: a peer's row stays, the replaced file's row goes.
    peer = {"task": "denoise", "model": "dncnn:peer.pth", "set": "two", "channels": "gray", "level": "σ25",
            "psnr": 30.0, "ssim": 0.9, "n_images": 2, "seconds_per_image": 0.1, "peak_mem_mb": None,
            "degradation": {"task": "denoise", "sigma": 25, "seed": 0}, "seed": 0, "quantize": False,
            "images": [], "inputs": None, "note": "", "tile": 512, "overlap": 80, "tiling": "blend",
            "ensemble": False, "precision": "fp32", "commit": "abc", "command": "magn eval -m dncnn:peer.pth"}
    stale = dict(peer, model=NAME, psnr=1.0, command="an old file's")
    (weights / "results" / f"{NAME}.json").write_text(json.dumps([peer, stale]))
    done = publish(tiny_run.run_dir, NAME, sets=[str(test_set)], manifest_path=weights / "manifest.json")

    entry = load_manifest(weights / "manifest.json").get(NAME)
    assert entry.default and entry.task == "denoise" and entry.channels == 1
    assert file_sha256(weights / entry.file) == entry.sha256 == done.sha256
    rows = json.loads((weights / "results" / f"{NAME}.json").read_text())
    models = {r["model"] for r in rows}
    assert models == {"input", NAME, f"{NAME} (blind)", "opencv-nlm", "dncnn:peer.pth"}
    assert stale not in rows and peer in rows
    command = eval_command(NAME, "denoise", 1, [str(test_set)])
    assert command.startswith("magn eval --task denoise --channels gray --sets ") and command.endswith("--blind")
    assert all(r["command"] == command for r in rows if r["model"] != "dncnn:peer.pth")
    # The manifest's scores are this file's rows (3 sigmas on one set), not the stale one.
    assert len(entry.scores) == 3 == done.scored_rows and all(s["psnr"] > 5 for s in entry.scores)
    # The curve: the run's validations, as its log has them.
    curve = json.loads((weights / "results" / f"{NAME}-validation.json").read_text())
    assert [p["step"] for p in curve["points"]] == [2, 4, 6]
    assert (weights / "results" / f"{NAME}-validation.png").stat().st_size > 0
    readme = (weights / "README.md").read_text()
    assert readme.startswith("# Weights\n\nHand-written text.\n") and f"### {NAME}" in readme
    assert f"    {command}" in readme                                 # "Measured with"
    result = runner.invoke(app, ["weights", "cards", "--check", "--manifest", str(weights / "manifest.json")])
    assert result.exit_code == 0, result.output


def test_publish_without_scoring_leaves_no_stale_score(tiny_run, tmp_path):
    """--no-score: the card shows the other models' rows only, never the replaced file's."""
    weights = _weights_folder(tmp_path)
    manifest = str(weights / "manifest.json")
    for _ in range(2):                                        # a second publish replaces the first
        result = runner.invoke(app, ["weights", "publish", str(tiny_run.run_dir), "--name", NAME, "--no-score",
                                     "--manifest", manifest])
        assert result.exit_code == 0, result.output
        assert "not scored: magn eval --task denoise --channels gray -m input -m tiny-denoise-gray" in result.output
    manifest_entries = load_manifest(manifest).entries
    assert [e.name for e in manifest_entries] == [NAME] and not manifest_entries[0].scores
    assert json.loads((weights / "results" / f"{NAME}.json").read_text()) == []
    (weights / "README.md").write_text((weights / "README.md").read_text() + "edited\n")
    result = runner.invoke(app, ["weights", "cards", "--check", "--manifest", manifest])
    assert isinstance(result.exception, MagnError) and "out of date" in str(result.exception)


def test_weights_results_adds_a_peers_rows_to_a_published_table_and_card(tiny_run, tmp_path):
    """`magn weights results NAME FILE`: a peer evaluated later joins the checkpoint's table
    and card, its command listed; a row of the same model, set and level is replaced; a
    file that is not eval results, or of another task, is refused in one line."""
    weights = _weights_folder(tmp_path)
    manifest = str(weights / "manifest.json")
    publish(tiny_run.run_dir, NAME, score=False, manifest_path=manifest)
    row = {"task": "denoise", "model": "ffdnet:peer.pth", "set": "two", "channels": "gray", "level": "σ25",
           "psnr": 30.0, "ssim": 0.9, "n_images": 2, "seconds_per_image": 0.1, "peak_mem_mb": None,
           "degradation": {"task": "denoise", "sigma": 25, "seed": 0}, "seed": 0, "quantize": False,
           "images": [], "inputs": None, "note": "", "tile": 512, "overlap": 80, "tiling": "blend",
           "ensemble": False, "precision": "fp32", "commit": "abc",
           "command": "magn eval -m ffdnet:peer.pth -o ~/evals/peer.json --output=/tmp/peer.md"}
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    first.write_text(json.dumps([row, dict(row, level="σ50", psnr=26.0)]))
    again.write_text(json.dumps([dict(row, psnr=30.5)]))
    for file in (first, again):
        result = runner.invoke(app, ["weights", "results", NAME, str(file), "--manifest", manifest])
        assert result.exit_code == 0, result.output
    rows = json.loads((weights / "results" / f"{NAME}.json").read_text())
    assert sorted((r["level"], r["psnr"]) for r in rows) == [("σ25", 30.5), ("σ50", 26.0)]
    readme = (weights / "README.md").read_text()
    assert "    magn eval -m ffdnet:peer.pth\n" in readme and "30.50" in readme       # where it wrote: not listed
    assert not load_manifest(manifest).get(NAME).scores               # a peer's rows are not its scores
    for bad, why in ((tmp_path / "bad.json", "not `magn eval` JSON results"),
                     (tmp_path / "jpeg.json", "rows of task dejpeg")):
        bad.write_text("{}" if bad.name == "bad.json" else json.dumps([dict(row, task="dejpeg")]))
        result = runner.invoke(app, ["weights", "results", NAME, str(bad), "--manifest", manifest])
        assert isinstance(result.exception, MagnError) and why in str(result.exception), result.output
    assert json.loads((weights / "results" / f"{NAME}.json").read_text()) == rows      # nothing written
