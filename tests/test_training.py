"""`magn train`: recipes, data, the loop, kill -9 + resume, DDP, and the command.

Models are tiny (8 features, one ResBlock per side, one GraphBlock) and patches 16x16:
the pixel graph costs O(pixels^2), so patch 32 would make every step ~15x slower
(0.8 s instead of 0.05 s on the 2-core CI machine). Data-only tests use patch 32.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magncli.checkpoints import read_checkpoint
from magncli.cli.app import app
from magncli.cli.common import cli_message
from magncli.degrade import BAYER_PATTERNS, bayer_masks
from magncli.errors import MagnError
from magncli.images import Image, write_image
from magncli.training.config import config_to_toml, load_config, read_recipe
from magncli.training.data import PatchDataset, StepBatches, make_loader, scale_saturation, scan_images
from magncli.training.loop import Trainer
from magncli.runs.folder import (BEST_FILE, CONFIG_FILE, CURVES_FILE, EXPORT_FILE, LATEST_FILE, LOG_FILE,
                                 STATE_FILE, load_run_config, read_log)

REPO = Path(__file__).resolve().parents[1]
# The task recipes (the paper's settings, one per task); paper.toml (their shared base) and
# the overlays are not recipes on their own.
OVERLAYS = ("paper", "cpu-s", "level-map", "warm-start", "denoise-low-sigma",
            "denoise-clean", "denoise-near-clean", "demosaic-hard", "demosaic-grain", "demosaic-film", "demosaic-scale", "qk-norm",
            "deeper")   # shared settings, not recipes of a checkpoint
# Whole CPU runs from a published start: the last stage of the gray denoiser's lineage
# (train/recipes/), #34's global-graph arm of it, #33's color denoiser told sigma and the
# gray one deeper.
RUNS = ("denoise-gray-level", "denoise-gray-global", "denoise-color-level", "denoise-gray-deeper")
RECIPES = sorted(p for p in (REPO / "train").glob("*.toml") if p.stem not in OVERLAYS + RUNS)
TINY = dict(n_feats=8, n_resblocks=1, n_graphblocks=1, patch_channels=4, patch_embed=8)

runner = CliRunner()


@pytest.fixture
def one_thread():
    """Bit-identical comparisons need the same intra-op thread count in every run."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _link_images(folder: Path, sources, n: int) -> Path:
    """A folder of symlinks to the first n images of a dataset (nothing is copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in Path(sources).iterdir() if p.suffix in (".png", ".jpg"))[:n]:
        (folder / src.name).symlink_to(src)
    return folder


@pytest.fixture
def gray_data(tmp_path, data_root):
    return _link_images(tmp_path / "train400", data_root / "Train400", 8)


@pytest.fixture
def color_data(tmp_path, data_root):
    return _link_images(tmp_path / "cbsd", data_root / "CBSD432", 4)


def tiny_config(data, **overrides):
    settings = dict(task="denoise", data=str(data), channels=1, sigma=25, model=TINY, batch=4,
                    patch=16, steps=20, lr=2e-3, schedule="constant", val_every=1000,
                    ckpt_every=1000, log_every=5, workers=0, ema_decay=0.9,
                    threads=1)   # not auto: the same count on a 1-core run and a 2-core CI
    settings.update(overrides)
    return load_config([], settings)


def _weights(state_path):
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    return state


# --------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_a_valid_config(recipe):
    config = load_config([recipe])
    assert config.patch == 64 and config.batch == 32 and config.lr == 1e-4   # the paper's
    assert config.betas == [0.9, 0.999]
    assert (config.channels == 3) == (config.task == "demosaic" or "color" in recipe.stem)
    small = load_config([recipe, REPO / "train" / "cpu-s.toml"])      # the long CPU runs
    assert small.arch == "magn-s" and small.precision == "bf16" and small.workers == 0
    # Validation never reads a test set: images held out of the training data.
    assert config.val == "" and config.val_holdout > 0 and small.val_holdout == config.val_holdout
    # The level-map overlay fits the tasks with a level map only (JPEG's quality, sigma).
    if config.task == "denoise":
        assert load_config([recipe, REPO / "train" / "cpu-s.toml", REPO / "train" / "level-map.toml"]).level_input()
    elif config.task == "dejpeg":
        mapped = load_config([recipe, REPO / "train" / "cpu-s.toml", REPO / "train" / "level-map.toml"])
        assert mapped.level_input() and mapped.quality_range == [5, 100]
        # Overlays' [model] tables merge: the QK-norm overlay keeps the level map.
        normed = load_config([recipe, REPO / "train" / "cpu-s.toml", REPO / "train" / "level-map.toml",
                              REPO / "train" / "qk-norm.toml"])
        assert normed.model == {"level_input": True, "qk_norm": True} and normed.level_input()
    else:
        with pytest.raises(MagnError, match="level map"):
            load_config([recipe, REPO / "train" / "level-map.toml"])


@pytest.mark.parametrize("recipe", [REPO / "train" / f"{name}.toml" for name in RUNS], ids=lambda p: p.stem)
def test_every_run_recipe_states_a_whole_cpu_run_from_a_published_start(recipe):
    """A run's recipe: loadable alone, validating on held-out training images, and starting
    from a checkpoint the manifest publishes."""
    from magncli.weights import load_manifest
    config = load_config([recipe])
    assert config.val == "" and config.val_holdout > 0 and config.workers == 0
    assert config.init_from in {e.name for e in load_manifest(REPO / "weights" / "manifest.json").entries}


def test_overrides_replace_their_partner_and_typos_are_errors(tmp_path):
    config = load_config([REPO / "train" / "denoise-gray-blind.toml"], {"sigma": 25, "steps": 7})
    assert config.sigma == 25 and config.sigma_range is None and config.steps == 7
    assert load_config([REPO / "train" / "denoise-gray-s50.toml"]).sigma == 50
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "denoise"\nsigmaa = 3\n')
    with pytest.raises(MagnError, match="sigmaa"):
        read_recipe(bad)
    with pytest.raises(MagnError, match="unknown task"):
        load_config([], {"task": "deblur"})
    # What a run folder records reads back to the same config.
    written = tmp_path / "config.toml"
    written.write_text(config_to_toml(config, "header"))
    assert load_config([written]) == config


# --------------------------------------------------------------------------- data

def test_denoise_batch_has_the_requested_noise(gray_data):
    config = tiny_config(gray_data, patch=32, batch=64)
    degraded, clean = next(iter(make_loader(PatchDataset(scan_images(gray_data).paths, config),
                                            config, 0, 1)))
    assert degraded.shape == clean.shape == (64, 1, 32, 32) and degraded.dtype == torch.float32
    noise = degraded - clean
    assert abs(noise.std().item() * 255 - 25) < 0.5          # 65k samples: +-0.2 expected
    assert degraded.min() < 0 or degraded.max() > 1          # unclipped, as eval's noise


def test_dejpeg_batch_is_8bit_jpeg_of_the_clean_patch(color_data):
    config = tiny_config(color_data, task="dejpeg", sigma=None, qualities=[10], channels=3, patch=32)
    dataset = PatchDataset(scan_images(color_data).paths, config)
    degraded, clean = dataset[3]
    assert degraded.shape == clean.shape == (3, 32, 32)
    assert not torch.equal(degraded, clean)
    assert torch.equal(torch.round(degraded * 255), degraded * 255)   # decoded 8-bit samples
    assert 20 < -10 * np.log10(((degraded - clean) ** 2).mean().item()) < 40


def test_gray_from_color_and_mosaic_zeros(color_data):
    gray = tiny_config(color_data, patch=32)
    assert PatchDataset(scan_images(color_data).paths, gray)[0][0].shape == (1, 32, 32)

    mosaic = tiny_config(color_data, task="demosaic", sigma=None, channels=3, patch=32)
    degraded, clean = PatchDataset(scan_images(color_data).paths, mosaic)[5]
    sampled = torch.from_numpy(bayer_masks(32, 32, "grbg")).permute(2, 0, 1)   # (3, 32, 32)
    assert torch.all(degraded[~sampled] == 0)
    assert torch.equal(degraded[sampled], clean[sampled])

    random_patterns = tiny_config(color_data, task="demosaic", sigma=None, channels=3, patch=32,
                                  pattern="random")
    dataset = PatchDataset(scan_images(color_data).paths, random_patterns)
    seen = set()
    for i in range(16):
        degraded, _ = dataset[i]
        nonzero = (degraded != 0).permute(1, 2, 0).numpy()
        matches = [p for p in BAYER_PATTERNS if not (nonzero & ~bayer_masks(32, 32, p)).any()]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1


def test_data_depends_only_on_seed_and_step(gray_data):
    config = tiny_config(gray_data, batch=4, steps=6, workers=2)
    dataset = PatchDataset(scan_images(gray_data).paths, config)
    with_workers = [b for b in make_loader(dataset, config, 2, 6)]
    config.workers = 0
    without = [b for b in make_loader(dataset, config, 0, 6)][2:]
    for (d1, c1), (d2, c2) in zip(with_workers, without, strict=True):
        assert torch.equal(d1, d2) and torch.equal(c1, c2)
    # DDP: the two ranks' slices of a step are the single-process batch.
    rank0, rank1 = (next(iter(StepBatches(3, 4, 4, rank, 2))) for rank in (0, 1))
    assert rank0 + rank1 == next(iter(StepBatches(3, 4, 4)))


def test_corrupt_files_are_skipped_and_counted_small_images_padded(tmp_path, one_thread):
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.RandomState(0)
    cv2.imwrite(str(folder / "big.png"), (rng.rand(40, 40) * 255).astype(np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), (rng.rand(7, 5) * 255).astype(np.uint8))  # < patch
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "empty.jpg").write_bytes(b"")
    found = scan_images(folder)
    assert sorted(p.name for p in found.paths) == ["big.png", "tiny.png"]
    assert sorted(p.name for p, _ in found.skipped) == ["broken.png", "empty.jpg"]

    config = tiny_config(folder, steps=2, patch=16)
    dataset = PatchDataset(found.paths, config)
    assert all(dataset[i][0].shape == (1, 16, 16) for i in range(12))   # both images drawn
    run = tmp_path / "run"
    Trainer(config, run).run()
    start = read_log(run / LOG_FILE)[0]
    assert start["event"] == "start" and start["skipped_images"] == 2 and start["images"] == 2


@pytest.mark.parametrize("setup, words", [
    (lambda tmp: dict(data=str(tmp / "nowhere")), ["does not exist"]),
    (lambda tmp: dict(data=str((tmp / "empty").mkdir() or tmp / "empty")), ["no image files"]),
    (lambda tmp: dict(data=str(_unreadable_folder(tmp))), ["none of the 2 image files"]),
    (lambda tmp: dict(task="deblur"), ["unknown task"]),
    (lambda tmp: dict(arch="unet"), ["unknown architecture 'unet'", "magn"]),
    (lambda tmp: dict(arch="magn-huge"), ["unknown variant 'magn-huge'", "magn-tiny-local"]),
])
def test_bad_training_input_is_one_line(tmp_path, gray_data, setup, words):
    args = dict(task="denoise", data=str(gray_data), sigma=25)
    args.update(setup(tmp_path))
    cli = ["train", "--out", str(tmp_path / "run"), "--quiet"]
    for key, value in args.items():
        cli += [f"--{key}", str(value)]
    result = runner.invoke(app, cli)
    assert isinstance(result.exception, MagnError), result.output
    assert "\n" not in str(result.exception)
    for word in words:
        assert word in str(result.exception)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def _unreadable_folder(tmp):
    folder = tmp / "bad"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"garbage")
    return folder


def test_resume_needs_a_run_folder(tmp_path):
    result = runner.invoke(app, ["train", "--resume", "--quiet"])
    assert isinstance(result.exception, MagnError) and "--out" in str(result.exception)
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "none"), "--quiet"])
    assert isinstance(result.exception, MagnError) and "config.toml" in str(result.exception)
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path), "--config",
                                 str(RECIPES[0]), "--quiet"])
    assert isinstance(result.exception, MagnError) and "drop --config" in str(result.exception)


# --------------------------------------------------------------------------- the loop

@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_the_noisy_input(gray_data, data_root, tmp_path, one_thread):
    config = tiny_config(gray_data, steps=120, val=str(data_root / "Set12"), val_images=2,
                         val_crop=48, val_every=60, log_every=20)
    run = tmp_path / "run"
    Trainer(config, run).run()
    records = read_log(run / LOG_FILE)
    losses = [r["loss"] for r in records if "loss" in r]
    val = [r for r in records if "val_psnr" in r]
    input_psnr = records[0]["val_input_psnr"]["mean"]
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < (25 / 255) ** 2          # below the noise power: it denoises
    assert val[-1]["val_psnr"] > input_psnr + 1.0, (val, input_psnr)
    for name in (CONFIG_FILE, CURVES_FILE, STATE_FILE, LATEST_FILE, BEST_FILE, EXPORT_FILE):
        assert (run / name).is_file(), name


def test_resume_restores_step_optimizer_and_weights(gray_data, tmp_path, one_thread):
    config = tiny_config(gray_data, steps=10, ckpt_every=3)
    run = tmp_path / "run"
    first = Trainer(config, run)
    first.run(until=6)
    resumed = Trainer(load_run_config(run), run, resume=True)
    assert resumed.step == 6 and resumed.ema.updates == 6
    for a, b in zip(first.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    saved, restored = first.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert saved["param_groups"] == restored["param_groups"]
    for key, state in saved["state"].items():
        for name, value in state.items():
            assert torch.equal(value, restored["state"][key][name]), name
    assert resumed.scheduler.last_epoch == 6
    with pytest.raises(MagnError, match="changed settings: lr"):
        Trainer(load_run_config(run, {"lr": 0.5}), run, resume=True)


@pytest.mark.slow
def test_kill9_then_resume_ends_bit_identical(gray_data, data_root, tmp_path, one_thread):
    """SIGKILL a training process right after its first checkpoint, resume it, and compare
    with an uninterrupted run: same live and EMA weights, to the bit (CPU, workers=0)."""
    config = tiny_config(gray_data, steps=48, ckpt_every=5, val=str(data_root / "Set12"),
                         val_images=1, val_crop=32, val_every=24)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(config_to_toml(config))

    whole = tmp_path / "whole"
    Trainer(config, whole).run()

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "magncli", "train", "--config", str(recipe),
                             "--out", str(killed), "--quiet"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (killed / STATE_FILE).exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    killed_at = _weights(killed / STATE_FILE)["step"]
    assert killed_at < config.steps and not (killed / EXPORT_FILE).exists()

    result = runner.invoke(app, ["train", "--resume", "--out", str(killed), "--quiet"])
    assert result.exit_code == 0, result.output
    a, b = _weights(whole / STATE_FILE), _weights(killed / STATE_FILE)
    assert a["step"] == b["step"] == config.steps
    for part in ("model", "ema"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["optimizer"]["state"][key]["exp_avg_sq"])
    steps_logged = [r["step"] for r in read_log(killed / LOG_FILE) if "loss" in r]
    assert steps_logged == sorted(set(steps_logged))      # no step logged twice after resume
    val_a = [r["val_psnr"] for r in read_log(whole / LOG_FILE) if "val_psnr" in r]
    val_b = [r["val_psnr"] for r in read_log(killed / LOG_FILE) if "val_psnr" in r]
    assert val_a == val_b


# --------------------------------------------------------------------------- DDP

def _ddp_worker(rank: int, world: int, init_file: str, data: str, run: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = Trainer(tiny_config(data, steps=4, batch=4, ckpt_every=2), run)
        trainer.run()
        torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_hold_the_same_weights(gray_data, tmp_path):
    import torch.multiprocessing as mp

    run = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(gray_data), str(run), str(tmp_path)),
             nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    params = [k for k in ranks[0] if "running_" not in k and "num_batches" not in k]
    for key in params:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    start = torch.load(run / STATE_FILE, weights_only=True)
    assert start["step"] == 4
    assert read_log(run / LOG_FILE)[0]["world_size"] == 2
    # It trained: the weights moved away from the seed's initialisation.
    from magncli.models import build_model
    torch.manual_seed(0)
    init = build_model("magn", in_channels=1, **TINY).state_dict()
    assert not torch.equal(init["head.weight"], ranks[0]["head.weight"])


# --------------------------------------------------------------------------- CLI

def test_cli_trains_writes_the_run_folder_and_restore_accepts_the_export(gray_data, tmp_path, one_thread,
                                                                         monkeypatch):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(config_to_toml(tiny_config(gray_data, steps=50)))
    run = tmp_path / "run"
    args = ["train", "--config", str(recipe), "--steps", "6", "--out", str(run), "--quiet",
            "--sigma-range", "0,55"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/magn", *args])  # as the console script sees it
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in (CONFIG_FILE, LOG_FILE, CURVES_FILE, STATE_FILE, LATEST_FILE, EXPORT_FILE):
        assert (run / name).is_file(), name
    used = load_run_config(run)
    assert used.steps == 6 and used.sigma_range == [0, 55] and used.sigma is None
    assert cv2.imread(str(run / CURVES_FILE)).shape[2] == 3

    state, meta = read_checkpoint(run / EXPORT_FILE)
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert meta["arch"] == "magn" and meta["config"]["in_channels"] == 1
    assert meta["task"] == "denoise" and meta["sigma_range"] == [0, 55]
    assert meta["provenance"]["steps"] == 6 and meta["provenance"]["batch_size"] == 4
    assert meta["provenance"]["command"] == shlex.join(["magn", *args])

    from magncli.weights import add_checkpoint
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"schema": 1, "checkpoints": []}))
    entry = add_checkpoint(run / EXPORT_FILE, name="tiny-blind", task="denoise", levels="0-55",
                           copy_file=False, manifest_path=manifest)
    assert entry.channels == 1 and entry.provenance["steps"] == 6 and entry.provenance["hardware"]

    image = tmp_path / "noisy.png"
    cv2.imwrite(str(image), (np.random.RandomState(1).rand(24, 20) * 255).astype(np.uint8))
    result = runner.invoke(app, ["restore", str(image), "--task", "denoise", "-w",
                                 str(run / EXPORT_FILE), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(tmp_path / "out" / "noisy_magn.png"), cv2.IMREAD_UNCHANGED).shape == (24, 20)

    # Starting a new run into a used run folder is refused.
    again = runner.invoke(app, ["train", "--config", str(recipe), "--out", str(run), "--quiet"])
    assert isinstance(again.exception, MagnError) and "pass --resume" in cli_message(again.exception)

    # A resume that goes further is part of how the weights were made: both commands.
    more = ["train", "--resume", "--out", str(run), "--steps", "8", "--quiet"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/magn", *more])
    assert runner.invoke(app, more).exit_code == 0
    _, meta = read_checkpoint(run / EXPORT_FILE)
    assert meta["provenance"]["steps"] == 8
    assert meta["provenance"]["command"] == shlex.join(["magn", *args]) + "; then " + shlex.join(["magn", *more])


def test_scale_saturation_keeps_luma_and_scales_chroma():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.3, 0.7, size=(8, 8, 3)).astype(np.float32)    # room to scale unclipped
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    assert np.allclose(scale_saturation(x, 1.0), x, atol=1e-6)
    gray = scale_saturation(x, 0.0)
    assert np.allclose(gray, np.repeat((x @ weights)[..., None], 3, axis=2), atol=1e-6)
    boosted = scale_saturation(x, 1.5)
    assert np.allclose(boosted @ weights, x @ weights, atol=1e-5)    # luma unchanged
    assert np.allclose(boosted - gray, 1.5 * (x - gray), atol=1e-5)  # chroma x1.5
    assert scale_saturation(np.array([[[1.0, 0.0, 0.0]]], np.float32), 3.0).max() <= 1.0


def test_hard_patches_keep_the_patch_bilinear_demosaicing_gets_most_wrong(color_data):
    """Hard-patch mining: with hard_patches = k a sample is the worst of k candidates for
    OpenCV bilinear demosaicing, the first of them being the sample a run without mining
    draws (whose data stream is unchanged)."""
    import cv2
    from magncli.degrade import mosaic_to_cfa
    paths = scan_images(color_data).paths

    def bilinear_mse(degraded, clean):        # cv2 directly: GRBG is OpenCV's "GB" tile
        cfa = np.round(np.clip(mosaic_to_cfa(degraded.numpy().transpose(1, 2, 0)), 0, 1) * 255).astype(np.uint8)
        rgb = cv2.demosaicing(cfa, cv2.COLOR_BayerGB2RGB).astype(np.float32) / 255
        return float(np.mean((rgb - clean.numpy().transpose(1, 2, 0)) ** 2))

    settings = dict(task="demosaic", sigma=None, channels=3, patch=32)
    plain = PatchDataset(paths, tiny_config(color_data, **settings))
    one = PatchDataset(paths, tiny_config(color_data, hard_patches=1, **settings))
    mined = PatchDataset(paths, tiny_config(color_data, hard_patches=4, **settings))
    gains = []
    for i in range(60):
        first, hard = plain[i], mined[i]
        assert all(torch.equal(a, b) for a, b in zip(first, one[i]))
        gains.append(bilinear_mse(*hard) - bilinear_mse(*first))
    assert min(gains) >= 0 and np.mean(np.array(gains) > 0) > 0.5
    with pytest.raises(MagnError, match="hard_patches"):
        tiny_config(color_data, hard_patches=0)
    with pytest.raises(MagnError, match="hard_patches"):    # noise would rank by sigma, not content
        tiny_config(color_data, hard_patches=4)
    overlays = [REPO / "train" / f"{name}.toml" for name in ("demosaic", "cpu-s", "warm-start", "demosaic-hard")]
    assert load_config(overlays).hard_patches == 4


def test_saturation_range_is_checked_and_applies_to_color_patches(gray_data, color_data):
    with pytest.raises(MagnError, match="saturation_range"):
        load_config([], dict(task="demosaic", data=str(gray_data), channels=3, saturation_range=[2, 1]))
    for data, channels in ((gray_data, 1), (color_data, 3)):
        plain = tiny_config(data, channels=channels)
        gray_out = tiny_config(data, channels=channels, saturation_range=[0.0, 0.0])  # chroma x0
        images = scan_images(data).paths
        (_, a), (_, b) = PatchDataset(images, plain)[3], PatchDataset(images, gray_out)[3]  # clean (C, p, p)
        if channels == 1:
            assert torch.equal(a, b)                                 # gray runs: untouched
        else:
            luma = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
            assert not torch.equal(a, b)
            assert torch.allclose(b, (a * luma).sum(0, keepdim=True).expand_as(b), atol=1e-5)


def test_grain_range_adds_independent_noise_to_the_clean_patch_the_mosaic_is_made_from(color_data):
    """grain_range: the clean target carries Gaussian grain of the drawn sigma, independent
    in each channel, and the mosaic is sampled from that grainy patch."""
    with pytest.raises(MagnError, match="grain_range"):
        tiny_config(color_data, task="demosaic", sigma=None, channels=3, grain_range=[3, 1])
    settings = dict(task="demosaic", sigma=None, channels=3, patch=64)
    images = scan_images(color_data).paths
    plain = PatchDataset(images, tiny_config(color_data, **settings))
    grainy = PatchDataset(images, tiny_config(color_data, grain_range=[6.0, 6.0], **settings))
    grains = []
    for i in range(6):
        (_, a), (mosaic, b) = plain[i], grainy[i]                    # (3, p, p) each
        unclipped = (a > 0.1) & (a < 0.9)
        grains.append((b - a)[:, unclipped.all(0)])                  # (3, n)
        sites = mosaic != 0
        assert torch.equal(mosaic[sites], b[sites])                 # the mosaic samples the grainy patch
    grain = torch.cat(grains, dim=1) * 255                           # (3, N) in 8-bit units
    assert abs(float(grain.std()) - 6.0) < 0.3 and abs(float(grain.mean())) < 0.2
    corr = torch.corrcoef(grain)
    assert float(corr[~torch.eye(3, dtype=bool)].abs().max()) < 0.05  # independent channels
    overlays = [REPO / "train" / f"{name}.toml" for name in ("demosaic", "cpu-s", "warm-start", "demosaic-grain")]
    assert load_config(overlays).grain_range == [0.0, 4.0]
    film = load_config([REPO / "train" / f"{name}.toml" for name in ("demosaic", "cpu-s", "warm-start", "demosaic-film")])
    assert (film.grain_range, film.saturation_range, film.pattern) == ([0.0, 4.0], [1.0, 5.0], "grbg")


def test_saturation_share_scales_the_chroma_of_that_share_of_patches(color_data):
    with pytest.raises(MagnError, match="saturation_share"):
        tiny_config(color_data, task="demosaic", sigma=None, channels=3, saturation_share=0.0)
    settings = dict(task="demosaic", sigma=None, channels=3, patch=32)
    images = scan_images(color_data).paths
    plain = PatchDataset(images, tiny_config(color_data, **settings))
    every = PatchDataset(images, tiny_config(color_data, saturation_range=[3.0, 3.0], **settings))
    half = PatchDataset(images, tiny_config(color_data, saturation_range=[3.0, 3.0], saturation_share=0.5,
                                            **settings))
    scaled = 0
    for i in range(40):
        clean, as_is, all_scaled = half[i][1], plain[i][1], every[i][1]   # the same crop, (3, p, p) each
        assert not torch.equal(as_is, all_scaled)
        assert torch.equal(clean, as_is) or torch.equal(clean, all_scaled)
        scaled += torch.equal(clean, all_scaled)
    assert 10 <= scaled <= 30                                          # about half


def test_scale_range_cuts_patches_from_the_image_shrunk_by_area_averaging(color_data):
    """scale_range: at 1/3 a patch is the 3x3 block means of a three-times-larger crop
    (skimage's block_reduce as the oracle; bilinear resampling would pick the centres);
    at 1 it is the plain crop."""
    from skimage.measure import block_reduce
    from magncli.training.data import random_downscaled_patch, random_patch
    for bad in ([0.0, 1.0], [0.8, 0.5], [0.5, 1.5]):
        with pytest.raises(MagnError, match="scale_range"):
            tiny_config(color_data, task="demosaic", sigma=None, channels=3, scale_range=bad)
    image = np.random.default_rng(0).integers(0, 256, (144, 144, 3), dtype=np.uint8)  # one 144-pixel crop fits
    shrunk = random_downscaled_patch(image, 48, 1 / 3, np.random.default_rng(1))      # (48, 48, 3)
    oracle = block_reduce(image.astype(np.float64) / 255.0, (3, 3, 1), np.mean)
    assert shrunk.shape == (48, 48, 3) and np.abs(shrunk - oracle).max() < 1e-6
    gray = random_downscaled_patch(image[..., :1], 48, 1 / 3, np.random.default_rng(1))
    assert gray.shape == (48, 48, 1) and np.abs(gray - oracle[..., :1]).max() < 1e-6
    same = random_downscaled_patch(image, 32, 1.0, np.random.default_rng(2))
    assert np.array_equal(same, random_patch(image, 32, np.random.default_rng(2)) / np.float32(255.0))
    settings = dict(task="demosaic", sigma=None, channels=3, patch=32)
    images = scan_images(color_data).paths
    plain = PatchDataset(images, tiny_config(color_data, **settings))
    far = PatchDataset(images, tiny_config(color_data, scale_range=[0.5, 0.5], **settings))
    for i in range(4):
        (mosaic, clean), (_, as_is) = far[i], plain[i]                # (3, p, p) each
        assert clean.shape == as_is.shape == (3, 32, 32) and not torch.equal(clean, as_is)
        assert torch.equal(mosaic[mosaic != 0], clean[mosaic != 0])  # the mosaic samples the shrunk patch
    stack = [REPO / "train" / f"{name}.toml" for name in ("demosaic", "cpu-s", "warm-start", "demosaic-film",
                                                          "demosaic-scale")]
    assert load_config(stack).scale_range == [0.3, 1.0]


# --------------------------------------------------------------------------- long runs on the CPU

def test_held_out_images_are_never_trained_on_and_the_data_is_recorded_without_paths(gray_data, tmp_path,
                                                                                      one_thread):
    import hashlib
    config = tiny_config(gray_data, steps=4, val_holdout=2, val_crop=32, val_every=4)
    trainer = Trainer(config, tmp_path / "run")
    held = sorted(gray_data.iterdir(), key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())[:2]
    assert not set(held) & set(trainer.dataset.paths) and len(trainer.dataset.paths) == 6
    assert trainer.validator is not None and sorted(trainer.validator.stems) == sorted(p.stem for p in held)
    trainer.run()
    _, meta = read_checkpoint(tmp_path / "run" / EXPORT_FILE)
    data = meta["provenance"]["training_data"]
    digest = hashlib.sha256()                                      # an independent recomputation
    for p in sorted(trainer.dataset.paths, key=lambda p: p.name):
        digest.update(p.name.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    assert data == {"set": gray_data.name, "images": 6, "sha256": digest.hexdigest()}
    assert str(tmp_path) not in json.dumps(meta) and str(gray_data) not in (tmp_path / "run" / LOG_FILE).read_text()
    # A later val_holdout replaces a recipe's val (and the other way round); both at once is an error.
    assert load_config([REPO / "train" / "denoise-gray-blind.toml"], {"val": "Set12"}).val_holdout == 0
    from magncli.training.config import config_from_dict
    with pytest.raises(MagnError, match="either val"):
        config_from_dict(dict(task="denoise", sigma=25, data="x", val="Set12", val_holdout=2))


def test_a_cpu_hour_budget_stops_with_a_checkpoint_and_resume_continues(gray_data, tmp_path, one_thread,
                                                                        monkeypatch):
    import magncli.training.loop as loop
    monkeypatch.setattr(loop, "git_commit", lambda: "aaaaaaa")       # the code of the first session
    run = tmp_path / "run"
    first = Trainer(tiny_config(gray_data, steps=400, ckpt_every=1000, val_holdout=2, val_crop=32), run)
    summary = first.run(cpu_hours=1e-9)                             # the first step spends it
    assert summary["step"] == 1 and _weights(run / STATE_FILE)["step"] == 1
    assert [r["step"] for r in read_log(run / LOG_FILE) if "val_psnr" in r] == [1]   # a point at the budget
    assert _weights(run / STATE_FILE)["cpu_s"] > 0 and not (run / EXPORT_FILE).exists()
    # Publishing mid-run: an export of the last checkpoint, no training, no log record.
    log_before = (run / LOG_FILE).read_text()
    result = runner.invoke(app, ["train", "--resume", "--out", str(run), "--export", "--quiet"])
    assert result.exit_code == 0, result.output
    _, meta = read_checkpoint(run / EXPORT_FILE)
    assert meta["step"] == 1 and meta["provenance"]["steps"] == 1 and meta["provenance"]["planned_steps"] == 400
    assert (run / LOG_FILE).read_text() == log_before and _weights(run / STATE_FILE)["step"] == 1
    (run / EXPORT_FILE).unlink()
    monkeypatch.setattr(loop, "git_commit", lambda: "bbbbbbb")       # resumed with newer code
    resumed = Trainer(load_run_config(run, {"steps": 3}), run, resume=True)
    assert resumed.step == 1 and resumed.cpu_s == pytest.approx(first.cpu_s)
    resumed.run()
    monkeypatch.setattr(loop, "git_commit", lambda: "ccccccc-dirty")  # published from an edited checkout
    _, meta = read_checkpoint(resumed.export())
    sessions = meta["provenance"]["sessions"]
    assert [s["event"] for s in sessions] == ["start", "resume"] and sessions[1]["step"] == 1
    # The provenance names the code that trained, not the checkout that exported.
    assert [s["commit"] for s in sessions] == ["aaaaaaa", "bbbbbbb"]
    assert meta["provenance"]["commit"] == "aaaaaaa, bbbbbbb"
    assert all(s["precision"] == "fp32" and s["threads"] == 1 for s in sessions)
    assert meta["provenance"]["cpu_hours"] == round(resumed.cpu_s / 3600, 3)


def test_warm_start_from_published_style_weights_when_the_run_folder_is_gone(gray_data, tmp_path, one_thread):
    import shutil
    first = tmp_path / "first"
    Trainer(tiny_config(gray_data, steps=6), first).run()
    weights = tmp_path / "published.safetensors"
    shutil.copy(first / EXPORT_FILE, weights)
    shutil.rmtree(first)                                            # the run folder is lost
    exported, meta = read_checkpoint(weights)
    warm = Trainer(tiny_config(gray_data, steps=4, init_from=str(weights)), tmp_path / "second")
    # Weights and EMA start from the file (fp16 values, widened); the optimizer is fresh.
    for key, value in warm.model.state_dict().items():
        assert torch.equal(value, exported[key].float()), key
        assert torch.equal(warm.ema.model.state_dict()[key], exported[key].float()), key
    assert warm.optimizer.state_dict()["state"] == {} and warm.step == 0
    assert warm.cpu_s == pytest.approx(meta["provenance"]["cpu_hours"] * 3600)
    warm.run()
    _, meta2 = read_checkpoint(tmp_path / "second" / EXPORT_FILE)
    start = meta2["provenance"]["sessions"][0]
    from magncli.weights import file_sha256
    assert start["warm_start"]["sha256"] == file_sha256(weights) and start["warm_start"]["step"] == 6
    assert meta2["provenance"]["cpu_hours"] >= meta["provenance"]["cpu_hours"]
    # A file written before later config keys existed (its metadata lacks them) still fits.
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(weights), framework="pt") as f:
        raw = f.metadata()
    older = json.loads(raw["magn"])
    for key in ("unshuffle", "pixel_heads", "pixel_graph_layers"):
        older["config"].pop(key)
    save_file(exported, str(tmp_path / "older.safetensors"), metadata={"magn": json.dumps(older)})
    Trainer(tiny_config(gray_data, steps=4, init_from=str(tmp_path / "older.safetensors")), tmp_path / "fourth")
    # Weights of another architecture are refused in one line, before any training.
    with pytest.raises(MagnError, match="architecture"):
        Trainer(tiny_config(gray_data, steps=4, init_from=str(weights), model=dict(TINY, n_feats=12)),
                tmp_path / "third")


def test_a_warm_start_from_a_runs_own_file_keeps_its_cpu_hours_and_runs(gray_data, tmp_path, one_thread):
    """model_latest (and model_best) carry the run's provenance, so a run started from one
    of them counts the CPU-hours and names the runs behind it, as from a published file."""
    first = tmp_path / "first"
    trainer = Trainer(tiny_config(gray_data, steps=4, ckpt_every=4), first)
    trainer.cpu_s = 7200.0                   # as if two CPU-hours in (a tiny run rounds to 0.000)
    trainer.run()
    _, latest = read_checkpoint(first / LATEST_FILE)
    second = tmp_path / "second"
    Trainer(tiny_config(gray_data, steps=4, ckpt_every=4, init_from=str(first / LATEST_FILE)), second).run()
    _, meta = read_checkpoint(second / LATEST_FILE)
    record = meta["provenance"]["sessions"][0]["warm_start"]
    assert record["weights"] == "first/model_latest.safetensors" and record["step"] == 4
    assert record["cpu_s"] == pytest.approx(latest["provenance"]["cpu_hours"] * 3600) and record["cpu_s"] >= 7200
    assert meta["provenance"]["cpu_hours"] >= latest["provenance"]["cpu_hours"] >= 2.0
    # A third run from the second's file names both runs, newest first.
    third = Trainer(tiny_config(gray_data, steps=4, init_from=str(second / LATEST_FILE)), tmp_path / "third")
    assert third.warm_start["weights"] == "second/model_latest.safetensors"
    assert third.warm_start["from"]["weights"] == "first/model_latest.safetensors"


def test_ema_averages_batchnorm_statistics_like_the_weights():
    """The EMA model's running statistics follow the same average as its weights (a jump
    of the live statistics moves them by 1 - decay), and counters are copied."""
    from magncli.training.runstate import EMA
    live = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    ema = EMA(live, decay=0.9)
    ema.updates = 1000                                    # past the early-phase warmup of the decay
    with torch.no_grad():
        live[0].weight.fill_(1.0)
        live[1].running_mean.fill_(10.0)
        live[1].num_batches_tracked.fill_(7)
    before_w, before_m = ema.model[0].weight.clone(), ema.model[1].running_mean.clone()
    ema.update(live)
    torch.testing.assert_close(ema.model[0].weight, 0.9 * before_w + 0.1)
    torch.testing.assert_close(ema.model[1].running_mean, 0.9 * before_m + 0.1 * 10.0)
    assert ema.model[1].num_batches_tracked.item() == 7


def test_adaptive_clip_bounds_a_step_at_a_multiple_of_the_recent_median_norm(gray_data, tmp_path, one_thread):
    """grad_clip_median: a gradient far above the recent ones is scaled down to
    grad_clip_median x their median (direction kept); the log counts clipped steps, and
    the history survives a resume."""
    trainer = Trainer(tiny_config(gray_data, steps=3, grad_clip_median=2.0, log_every=1), tmp_path / "run")
    degraded, clean = next(iter(make_loader(trainer.dataset, trainer.config, 0, 1)))
    trainer.recent_grad_norms.extend([1e-6] * 60)          # a history of tiny gradients
    _, norm, was_clipped = trainer._train_step(degraded, clean)
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    assert was_clipped and norm > 1e-4 and grads.norm().item() == pytest.approx(2e-6, rel=1e-3)
    # Below its history's minimum length the adaptive clip waits (a fresh run's first steps).
    fresh = Trainer(tiny_config(gray_data, steps=3, grad_clip_median=2.0, log_every=1), tmp_path / "fresh")
    fresh.run()
    records = [r for r in read_log(tmp_path / "fresh" / LOG_FILE) if "loss" in r]
    assert [r["clipped_steps"] for r in records] == [0, 0, 0]
    assert all(r["grad_norm_max"] >= r["grad_norm"] > 0 for r in records)
    resumed = Trainer(tiny_config(gray_data, steps=4, grad_clip_median=2.0, log_every=1), tmp_path / "fresh",
                      resume=True)
    assert list(resumed.recent_grad_norms) == pytest.approx(list(fresh.recent_grad_norms))


def test_warm_start_across_channel_counts_converts_head_and_tail(gray_data, tmp_path, one_thread):
    """A gray run may start from a color model of the same architecture (the gray JPEG
    run from the color one): its weights are the architecture's conversion (exact on gray
    content: tests/test_magn_model.py), and the run's provenance says so."""
    from magncli.checkpoints import save_checkpoint
    from magncli.models.registry import convert_checkpoint_channels
    from magn_testkit import random_magn
    color = random_magn("magn", seed=1, in_channels=3, **TINY)
    before = {"weights": "older", "step": 3, "commands": "magn train A"}     # how the color run began
    save_checkpoint(tmp_path / "color.safetensors", color, {"step": 9, "provenance": {
        "cpu_hours": 0.5, "sessions": [{"event": "start", "warm_start": before}, {"event": "resume"}]}})
    warm = Trainer(tiny_config(gray_data, steps=2, init_from=str(tmp_path / "color.safetensors")),
                   tmp_path / "gray")
    expected = convert_checkpoint_channels("magn", color.state_dict(), color.config, 1)
    for key, value in warm.model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert warm.warm_start["converted"] == "3 -> 1 channels" and warm.cpu_s == pytest.approx(1800)
    assert warm.warm_start["from"] == before                 # the chain of runs goes on back
    # A shallower model of the same network: the deeper run starts from what it computes.
    shallow = random_magn("magn", seed=2, in_channels=1, **TINY)
    save_checkpoint(tmp_path / "shallow.safetensors", shallow, {"step": 5})
    deep = Trainer(tiny_config(gray_data, steps=2, model=dict(TINY, n_resblocks=TINY["n_resblocks"] + 1),
                               init_from=str(tmp_path / "shallow.safetensors")), tmp_path / "deep")
    n = TINY["n_resblocks"]
    assert deep.warm_start["converted"] == f"{n} -> {n + 1} ResBlocks a side"
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        # The same function up to float rounding (the two networks' convolutions may run
        # different oneDNN kernels: 2.5e-5 apart was seen here).
        torch.testing.assert_close(deep.model.eval()(x), shallow.eval()(x), rtol=0, atol=1e-4)
    # Both at once: the color file converted to gray and deepened.
    both = Trainer(tiny_config(gray_data, steps=2, model=dict(TINY, n_resblocks=n + 1),
                               init_from=str(tmp_path / "color.safetensors")), tmp_path / "both")
    assert both.warm_start["converted"] == f"3 -> 1 channels, {n} -> {n + 1} ResBlocks a side"
    # A blind file into a model told the level (a denoiser told sigma), deepened too: it
    # starts from what the file computes, whatever the map says.
    told = Trainer(tiny_config(gray_data, steps=2, model=dict(TINY, n_resblocks=n + 1, level_input=True),
                               init_from=str(tmp_path / "shallow.safetensors")), tmp_path / "told")
    assert told.warm_start["converted"] == f"level map added, {n} -> {n + 1} ResBlocks a side"
    with torch.no_grad():
        for sigma_plane in (-1.0, 0.5):
            mapped = torch.cat([x, torch.full_like(x, sigma_plane)], 1)
            torch.testing.assert_close(told.model.eval()(mapped), shallow.eval()(x), rtol=0, atol=1e-4)
    # The both-levels network from its local twin (#34): the pixel graph adds zero at first.
    local = random_magn("magn-s-local", seed=3, in_channels=1, **dict(TINY, n_feats=8))
    save_checkpoint(tmp_path / "local.safetensors", local, {"step": 5})
    both_levels = Trainer(tiny_config(gray_data, steps=2, arch="magn-s", model=dict(TINY, n_feats=8),
                                      init_from=str(tmp_path / "local.safetensors")), tmp_path / "global")
    assert both_levels.warm_start["converted"] == "global graph added"
    assert any(".pixel_graph." in k for k in both_levels.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(both_levels.model.eval()(x), local.eval()(x), rtol=0, atol=1e-4)
    # A deeper file than the run's network is refused, in one line.
    with pytest.raises(MagnError, match="architecture"):
        Trainer(tiny_config(gray_data, steps=2, init_from=str(tmp_path / "shallow.safetensors"),
                            model=dict(TINY, n_resblocks=0)), tmp_path / "y")
    # A color model of another width is still refused, in one line.
    save_checkpoint(tmp_path / "wide.safetensors", random_magn("magn", in_channels=3, **dict(TINY, n_feats=12)))
    with pytest.raises(MagnError, match="architecture"):
        Trainer(tiny_config(gray_data, steps=2, init_from=str(tmp_path / "wide.safetensors")), tmp_path / "x")


@pytest.mark.slow
@pytest.mark.skipif(not __import__("magncli.devices", fromlist=["x"]).cpu_has_native_bf16(),
                    reason="this CPU has no native bf16")
def test_bf16_and_fp32_short_runs_reach_the_same_validation_psnr(gray_data, tmp_path, one_thread):
    """bf16 autocast on the CPU (weights, optimizer, EMA and loss in fp32) trains as well
    as fp32: over three seeds, the same short run's validation PSNR agrees within 0.05 dB
    on average. (One seed is not enough: two fp32 runs of different seeds already differ
    by about 0.1 dB here, and rounding sends bf16 down another such trajectory.)"""
    diffs = []
    for seed in (0, 1, 2):
        scores = {}
        for precision in ("fp32", "bf16"):
            config = tiny_config(gray_data, arch="magn-s-local", model={}, patch=32, batch=8, steps=300,
                                 lr=4e-4, schedule="cosine", min_lr=1e-6, grad_clip=0.5, seed=seed,
                                 precision=precision, val_holdout=2, val_crop=96, val_every=300,
                                 ema_decay=0.99)
            trainer = Trainer(config, tmp_path / f"{precision}-{seed}")
            trainer.run()
            assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
            assert all(v.dtype == torch.float32 for s in trainer.optimizer.state.values()
                       for v in s.values() if v.is_floating_point())
            scores[precision] = trainer.best_psnr
            assert trainer.best_psnr > trainer.validator.input_psnr["mean"] + 5.0   # it learned
        diffs.append(scores["bf16"] - scores["fp32"])
    assert abs(float(np.mean(diffs))) < 0.05, diffs


# (task, level key, whole range, focus, share of the whole range inside the focus, bad pairing)
FOCUSES = [("dejpeg", "quality", [5, 100], [10, 40, 0.5], 31 / 96, dict(qualities=[10])),
           ("denoise", "sigma", [0, 75], [0, 10, 0.4], 10 / 75, dict(sigma=25))]


@pytest.mark.parametrize("task,key,whole,focus,share,fixed", FOCUSES, ids=[f[1] for f in FOCUSES])
def test_a_level_focus_oversamples_its_span_inside_the_whole_range(monkeypatch, task, key, whole, focus,
                                                                  share, fixed):
    import magncli.training.data as data_mod
    drawn = []
    real = data_mod.PatchDegradation._level
    monkeypatch.setattr(data_mod.PatchDegradation, "_level",
                        lambda self, rng: drawn.append(real(self, rng)) or drawn[-1])
    patch = np.full((16, 16, 1), 0.5, np.float32)
    for setting, expected in ((None, share), (focus, focus[2] + (1 - focus[2]) * share)):
        drawn.clear()
        config = load_config([], {"task": task, "data": "x", "channels": 1, f"{key}_range": whole,
                                  f"{key}_focus": setting})
        degrade = data_mod.PatchDegradation(config)
        for i in range(2000):
            degrade(patch, np.random.default_rng((0, i)))
        assert min(drawn) >= whole[0] and max(drawn) <= whole[1]
        inside = np.mean([focus[0] <= level <= focus[1] for level in drawn])
        assert abs(inside - expected) < 0.04, (setting, inside, expected)
    with pytest.raises(MagnError, match=f"{key}_focus"):     # a focus needs a range to focus in
        load_config([], {"task": task, "data": "x", f"{key}_focus": focus, **fixed})


@pytest.mark.parametrize("overlay,focus,steps", [("denoise-clean", [0, 10, 0.3], 12000),
                                                 ("denoise-near-clean", [0, 6, 0.35], 6000)])
def test_the_clean_overlays_set_a_sigma_focus(overlay, focus, steps):
    overlays = [REPO / "train" / f"{name}.toml" for name in
                ("denoise-color-blind", "cpu-s", "warm-start", "denoise-low-sigma", overlay)]
    config = load_config(overlays)                                # the overlay as its comment uses it
    assert (config.sigma_focus, config.steps, config.sigma_range) == (focus, steps, [0, 75])


def test_a_level_conditioned_run_sees_each_patch_quality_and_sometimes_unknown(gray_data):
    """Each degraded patch carries the level map of its own quality (libjpeg's scale / 500,
    see tasks.py), or -1 for level_unknown's share; the image channels are the JPEG of the
    clean patch exactly as without the map."""
    import magncli.training.data as data_mod
    drawn = []
    real = data_mod.PatchDegradation.draw
    config = load_config([], dict(task="dejpeg", data=str(gray_data), channels=1, quality_range=[5, 100],
                                  arch="magn-s-local", model={"level_input": True}, patch=32,
                                  level_unknown=0.25))
    plain = PatchDataset(scan_images(gray_data).paths, load_config([], dict(
        task="dejpeg", data=str(gray_data), channels=1, quality_range=[5, 100], patch=32)))
    dataset = PatchDataset(scan_images(gray_data).paths, config)
    data_mod.PatchDegradation.draw = lambda self, rng: drawn.append(real(self, rng)) or drawn[-1]
    try:
        unknown = 0
        for i in range(400):
            degraded, clean = dataset[i]
            quality = drawn[-1].level
            assert degraded.shape == (2, 32, 32) and clean.shape == (1, 32, 32)
            plane = degraded[1].unique()
            assert len(plane) == 1
            scale = 5000 // quality if quality < 50 else 200 - 2 * quality
            unknown += float(plane) == -1.0
            assert float(plane) in (-1.0, pytest.approx(min(scale / 500, 2.0)))
            if i < 20:
                torch.testing.assert_close(degraded[:1], plain[i][0], rtol=0, atol=0)
    finally:
        data_mod.PatchDegradation.draw = real
    assert abs(unknown / 400 - 0.25) < 0.07
    with pytest.raises(MagnError, match="level map"):
        load_config([], dict(task="demosaic", data="x", channels=3, arch="magn-s-local",
                             model={"level_input": True}))


@pytest.mark.slow
def test_a_level_conditioned_model_trains_validates_and_restores(gray_data, tmp_path, one_thread):
    config = tiny_config(gray_data, task="dejpeg", sigma=None, qualities=[10, 90], steps=6,
                         model=dict(TINY, level_input=True), val_holdout=2, val_every=6, val_crop=32)
    run = tmp_path / "run"
    Trainer(config, run).run()
    val = [r for r in read_log(run / LOG_FILE) if "val_psnr" in r]
    assert set(val[-1]["val"]) == {"q10", "q90", "q10 blind", "q90 blind", "mean"}   # told and blind
    assert val[-1]["val"]["mean"] == pytest.approx(sum(v for k, v in val[-1]["val"].items() if k != "mean") / 4)
    state, meta = read_checkpoint(run / EXPORT_FILE)
    assert meta["config"]["level_input"] is True and state["head.weight"].shape[1] == 2
    source = sorted(gray_data.iterdir())[0]
    result = runner.invoke(app, ["restore", str(source), "--task", "dejpeg", "--quality", "30",
                                 "--weights", str(run / EXPORT_FILE), "-o", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "out").iterdir()] == [source.stem + "_magn.png"]


def test_export_best_publishes_the_best_validation_with_its_step(gray_data, tmp_path, one_thread):
    """export(best=True) writes model_best's weights (not the last EMA), with the step and
    CPU time of the validation that chose them."""
    config = tiny_config(gray_data, steps=6, val_holdout=2, val_every=2, val_crop=32, ckpt_every=2)
    run = tmp_path / "run"
    trainer = Trainer(config, run)
    trainer.run()
    best_state, best_meta = read_checkpoint(run / BEST_FILE)
    state, meta = read_checkpoint(trainer.export(best=True))
    assert meta["step"] == best_meta["step"] == meta["provenance"]["steps"]
    for key, value in best_state.items():
        torch.testing.assert_close(state[key].float(), value.half().float())
    vals = {r["step"]: r["cpu_s"] for r in read_log(run / LOG_FILE) if "val_psnr" in r}
    assert meta["provenance"]["cpu_hours"] == round(vals[best_meta["step"]] / 3600, 3)
    _, last = read_checkpoint(trainer.export())
    assert last["step"] == 6


def test_relative_losses_weigh_each_sample_by_its_input_error():
    """Naive oracle: a loop over samples of sum((r - c)^2) / n over (sum((d - c)^2) / n +
    1e-5); plain mse stays the paper's mean over everything."""
    from magncli.training.loss import training_loss
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 2, 8, 8, generator=g)
    degraded = clean + torch.randn(3, 2, 8, 8, generator=g) * torch.tensor([0.2, 0.01, 0.0]).view(3, 1, 1, 1)
    restored = clean + torch.randn(3, 2, 8, 8, generator=g) * 0.005
    expected = np.mean([float(((restored[i] - clean[i]) ** 2).sum() / 128)
                        / (float(((degraded[i] - clean[i]) ** 2).sum() / 128) + 1e-5) for i in range(3)])
    assert float(training_loss(restored, clean, degraded, "relative-mse")) == pytest.approx(expected, rel=1e-5)
    floored = np.mean([float(((restored[i] - clean[i]) ** 2).sum() / 128)
                       / (float(((degraded[i] - clean[i]) ** 2).sum() / 128) + 0.01) for i in range(3)])
    assert float(training_loss(restored, clean, degraded, "relative-mse", relative_floor=0.01)) == pytest.approx(floored, rel=1e-5)
    assert torch.equal(training_loss(restored, clean, degraded, "mse"), torch.nn.functional.mse_loss(restored, clean))
    # psnr-gain: minus the mean PSNR gain in dB, scored as skimage scores PSNR (data range
    # 1); the lossless third sample (restored error / 0) counts through the 1e-10 guard.
    from skimage.metrics import peak_signal_noise_ratio as psnr
    gains = [psnr(clean[i].numpy(), restored[i].numpy(), data_range=1) - psnr(clean[i].numpy(), degraded[i].numpy(), data_range=1)
             for i in range(2)]
    mse2 = float(((restored[2] - clean[2]) ** 2).mean())
    gains.append(-10 * np.log10((mse2 + 1e-10) / 1e-10))
    assert float(training_loss(restored, clean, degraded, "psnr-gain")) == pytest.approx(-np.mean(gains), rel=1e-4)
    with pytest.raises(MagnError, match="unknown loss"):
        load_config([], dict(task="denoise", data="x", sigma=25, loss="l1"))


@pytest.mark.slow
def test_a_compiled_training_step_trains_the_same_parameters(gray_data, tmp_path, one_thread):
    """compile = true wraps the forward only: the model's own tensors are trained, saved
    and exported, and a run compiled from a checkpoint of an eager run resumes it."""
    run = tmp_path / "run"
    eager = Trainer(tiny_config(gray_data, steps=6, ckpt_every=3), run)
    eager.run(until=3)
    compiled = Trainer(load_run_config(run, {"compile": True}), run, resume=True)
    before = {k: v.clone() for k, v in compiled.model.state_dict().items()}
    compiled.run()
    after = compiled.model.state_dict()
    assert compiled.step == 6 and any(not torch.equal(before[k], after[k]) for k in before)
    _, meta = read_checkpoint(run / EXPORT_FILE)
    assert meta["step"] == 6 and all(not k.startswith("_orig_mod") for k in read_checkpoint(run / EXPORT_FILE)[0])


def test_a_continued_runs_published_curve_keeps_the_runs_before_it(tmp_path):
    """magn weights publish: a run warm-started from the checkpoint it republishes keeps
    the earlier runs' validation points up to the step it started from (the card's curve
    spans every run that made the weights); a run from other weights, or on other
    held-out images, starts its own curve."""
    from magncli.runs.validation_curve import earlier_points
    curve_file = tmp_path / "NAME-validation.json"
    earlier = [{"step": 1000, "cpu_hours": 1.0, "val_psnr": 30.0, "run": "first"},
               {"step": 2000, "cpu_hours": 2.0004, "val_psnr": 30.5, "run": "first"},
               {"step": 3000, "cpu_hours": 3.0, "val_psnr": 30.4}]      # after the exported step
    curve_file.write_text(json.dumps({"validation": "held-out (24)", "points": earlier}))
    # Started from the step-2000 export, whose provenance said 2.000 CPU-hours.
    warm = {"weights": "x.safetensors", "sha256": "abc", "cpu_s": 7200.0}
    runs = tmp_path / "runs"
    assert earlier_points(curve_file, warm, {"abc"}, "held-out (24)", runs) == earlier[:2]
    assert earlier_points(curve_file, warm, {"other"}, "held-out (24)", runs) == []
    # Republishing a later step of the same run: the replaced export's run began from "abc" too.
    assert earlier_points(curve_file, warm, {"export of step 1000", "abc"}, "held-out (24)",
                                       runs) == earlier[:2]
    assert earlier_points(curve_file, warm, {"abc"}, "other (8)", runs) == []
    assert earlier_points(curve_file, None, {"abc"}, "held-out (24)", runs) == []   # from scratch
    # Through a run that was not published: started from the step-2000 export, stopped, and
    # this run started from its model_latest at 2.5 CPU-hours. Its points up to there join.
    (runs / "between").mkdir(parents=True)
    log = [{"event": "start", "step": 0, "val_set": "held-out (24)", "warm_start": warm},
           {"step": 500, "val_psnr": 31.0, "val": {"s": 31.0, "mean": 31.0}, "cpu_s": 8000.0},
           {"step": 1000, "val_psnr": 31.2, "val": {"s": 31.2, "mean": 31.2}, "cpu_s": 9000.0},
           {"step": 1500, "val_psnr": 31.3, "val": {"s": 31.3, "mean": 31.3}, "cpu_s": 9900.0}]
    (runs / "between" / LOG_FILE).write_text("".join(json.dumps(r) + "\n" for r in log))
    chained = {"weights": "between/model_latest.safetensors", "sha256": "def", "cpu_s": 9000.0, "from": warm}
    between = [{"step": s, "cpu_hours": round(c / 3600, 4), "val_psnr": v, "levels": {"s": v}, "run": "between"}
               for s, v, c in ((500, 31.0, 8000.0), (1000, 31.2, 9000.0))]
    assert earlier_points(curve_file, chained, {"abc"}, "held-out (24)", runs) == earlier[:2] + between
    assert earlier_points(curve_file, chained, {"abc"}, "other (8)", runs) == []


def test_the_trained_commit_names_every_session():
    """A log from before sessions recorded their commit gives the checkout's; a log with
    both says which sessions it cannot name."""
    from magncli.runs import provenance
    assert provenance.trained_commit([{"commit": "a"}, {"commit": "b"}, {"commit": "a"}]) == "a, b"
    assert provenance.trained_commit([{}, {"commit": "b"}]) == "unrecorded, b"
    assert provenance.trained_commit([{}, {}]) == provenance.git_commit()


def test_auto_threads_take_the_cores_nothing_else_keeps_busy(monkeypatch):
    """threads auto: all usable cores on an idle machine, one fewer per core something
    else keeps busy (half a core or more), never below one; re-read every half minute."""
    from magncli.training import threads as th
    assert [th.others_to_threads(o, 2) for o in (0.0, 0.4, 0.6, 1.0, 1.7, 3.0)] == [2, 2, 1, 1, 1, 1]
    assert [th.others_to_threads(o, 4) for o in (0.0, 1.2, 2.5)] == [4, 3, 1]
    clock = {"t": 0.0, "busy": 100.0, "own": 10.0}
    monkeypatch.setattr(th.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(th.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(th, "_busy_seconds", lambda cores: clock["busy"])
    monkeypatch.setattr(th, "usable_cores", lambda: [0, 1])
    auto = th.AutoThreads()
    assert auto.threads() == 2                       # first look: nothing to compare yet
    clock.update(t=31.0, busy=100.0 + 31 * 2, own=10.0 + 31 * 1)       # someone else uses a core
    assert auto.threads() == 1
    clock.update(t=40.0, busy=200.0, own=100.0)                          # within the half minute
    assert auto.threads() == 1
    clock.update(t=70.0, busy=200.0 + 30 * 2, own=100.0 + 30 * 2)       # the run alone again
    assert auto.threads() == 2


@pytest.mark.parametrize("value,expected", [("auto", 0), ("2", 2), (None, None)])
def test_threads_option_takes_a_number_or_auto(value, expected):
    from magncli.cli.train import _threads
    assert _threads(value) == expected
    for bad in ("two", "0", "-1"):
        with pytest.raises(MagnError, match="--threads"):
            _threads(bad)


def test_a_run_without_a_recipe_fits_the_machine_and_the_data(tmp_path):
    """`magn train --task --data` alone: on a CPU the preset the published checkpoints
    trained with (not the paper's GPU settings), channels from the photos, a tenth held
    out; every flag wins over each."""
    from magncli.training.plain_run import CPU_PRESET, is_color, plain_settings
    from cli_testkit import make_images
    folder = tmp_path / "photos"
    make_images(folder, n=20, size=(40, 48))                                  # color
    images = sorted(folder.iterdir())
    flags = dict(task="denoise", data=str(folder), sigma_range=[0, 55], channels=None, batch=None)
    cpu = plain_settings(flags, on_cpu=True, native_bf16=True, images=images, is_color=is_color)
    assert {k: cpu[k] for k in CPU_PRESET} == CPU_PRESET and cpu["precision"] == "bf16"
    assert cpu["channels"] == 3 and cpu["val_holdout"] == 2 and cpu["sigma_range"] == [0, 55]
    short = plain_settings(dict(flags, steps=200), on_cpu=True, native_bf16=True, images=images, is_color=is_color)
    assert short["warmup_steps"] == 20                      # a tenth of a short run, not the preset's 500
    assert plain_settings(flags, on_cpu=True, native_bf16=False, images=images, is_color=is_color)["precision"] == "fp32"
    gpu = plain_settings(dict(flags, channels=1, batch=8), on_cpu=False, native_bf16=False, images=images,
                         is_color=is_color)
    assert gpu["channels"] == 1 and gpu["batch"] == 8 and "arch" not in gpu      # the paper's network
    gray = tmp_path / "gray"
    gray.mkdir()
    for i in range(3):
        write_image(gray / f"{i}.png", Image(np.full((16, 16, 3), 0.25 * i, np.float32)))   # R = G = B
    assert plain_settings(flags, on_cpu=True, native_bf16=True, images=sorted(gray.iterdir()),
                          is_color=is_color)["channels"] == 1
    assert "val_holdout" not in plain_settings(flags, on_cpu=True, native_bf16=True,
                                               images=sorted(gray.iterdir()), is_color=is_color)


def test_a_warm_up_longer_than_the_run_is_said(gray_data):
    from magncli.training.plain_run import warnings_for
    assert warnings_for(tiny_config(gray_data, steps=300, warmup_steps=500))[0].startswith("the warm-up (500 steps)")
    assert warnings_for(tiny_config(gray_data, steps=300, warmup_steps=300, schedule="cosine")) != []
    assert warnings_for(tiny_config(gray_data, steps=600, warmup_steps=500, schedule="cosine")) == []
    recipe = gray_data.parent / "long-warm-up.toml"
    recipe.write_text("warmup_steps = 500\n")
    result = runner.invoke(app, ["train", "--config", str(recipe), "--task", "denoise", "--data", str(gray_data),
                                 "--sigma", "25", "--arch", "magn-tiny-local", "--batch", "2", "--patch", "16",
                                 "--workers", "0", "--steps", "2", "--out", str(gray_data.parent / "short"), "-q"])
    assert "warning: the warm-up (500 steps) is as long as the run (2 steps)" in result.output


def test_a_run_too_big_for_the_memory_is_refused_before_its_first_step(gray_data, tmp_path, monkeypatch):
    """The estimate (saved activations of one sample x batch, weights x 5, the data per
    loader) against the memory available: refused in one line, nothing trained."""
    from magncli.training import memory
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**30)
    Trainer(tiny_config(gray_data, batch=2, patch=32), tmp_path / "fits")         # tiny: fits in 1 GiB
    config = tiny_config(gray_data, batch=64, patch=32)
    per_sample = None

    def measured(model, sample, amp_dtype):
        nonlocal per_sample
        per_sample = real(model, sample, amp_dtype)
        return per_sample
    real = memory.saved_activation_bytes
    monkeypatch.setattr(memory, "saved_activation_bytes", measured)
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    with pytest.raises(MagnError, match=r"would need about .* GB .* lower batch= \(64\)"):
        Trainer(config, tmp_path / "too-big")
    # Oracle: a (1, 8, 32, 32) float32 feature map is saved at least once per conv input.
    assert per_sample >= 8 * 32 * 32 * 4
    assert not (tmp_path / "too-big" / "state_latest.pt").exists()


# --------------------------------------------------------------------------- run folders (#37)

def test_a_new_run_never_writes_over_a_trained_run_whose_resume_point_is_gone(gray_data, tmp_path, one_thread):
    run = tmp_path / "run"
    Trainer(tiny_config(gray_data, steps=4), run).run()
    (run / STATE_FILE).unlink()                   # a finished run, pruned to its weights
    kept = {n: (run / n).read_bytes() for n in (EXPORT_FILE, LATEST_FILE, LOG_FILE)}
    with pytest.raises(MagnError, match="holds a trained run"):
        Trainer(tiny_config(gray_data, steps=4), run)
    assert {n: (run / n).read_bytes() for n in kept} == kept


def test_a_folder_that_is_not_a_run_is_never_written_over(gray_data, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / CONFIG_FILE).write_text("my settings")
    (mine / LOG_FILE).write_text("my diary")
    result = runner.invoke(app, ["train", "--task", "denoise", "--data", str(gray_data), "--sigma", "25",
                                 "--arch", "magn-tiny-local", "--steps", "2", "--batch", "2", "--patch", "16",
                                 "--workers", "0", "--out", str(mine), "--quiet"])
    assert isinstance(result.exception, MagnError) and "not a magn run folder" in str(result.exception)
    assert (mine / CONFIG_FILE).read_text() == "my settings" and (mine / LOG_FILE).read_text() == "my diary"
    assert sorted(os.listdir(mine)) == [CONFIG_FILE, LOG_FILE]


def test_a_run_folder_is_claimed_while_it_trains_and_a_legacy_run_still_resumes(gray_data, tmp_path, one_thread):
    from magncli.fileio import lock_path
    from magncli.runs.folder import MARKER_FILE
    run = tmp_path / "run"
    Trainer(tiny_config(gray_data, steps=6, ckpt_every=3), run).run(until=3)
    assert (run / MARKER_FILE).is_file() and not lock_path(run).exists()
    (run / MARKER_FILE).unlink()                  # as a run folder made before the marker
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from magncli.fileio import claim_output
with claim_output({str(run)!r}, overwrite=True):
    print("held", flush=True)
    time.sleep(120)
"""], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert holder.stdout.readline().strip() == "held"
        log_before = (run / LOG_FILE).read_bytes()
        with pytest.raises(MagnError, match="in use by another magn process"):
            Trainer(load_run_config(run), run, resume=True)
        assert (run / LOG_FILE).read_bytes() == log_before
    finally:
        holder.kill()
        holder.wait()
    resumed = Trainer(load_run_config(run), run, resume=True)
    assert resumed.step == 3 and lock_path(run).exists()
    resumed.run()
    assert resumed.step == 6 and not lock_path(run).exists() and (run / MARKER_FILE).is_file()


@pytest.mark.parametrize("settings, words", [
    (dict(seed=-1), "seed must be an integer from 0 to 4294967295"),
    (dict(seed=2 ** 32), "seed must be an integer from 0 to 4294967295"),
    (dict(val_seed=-3), "val_seed must be an integer"),
    (dict(lr="1e-4"), "lr must be a finite number, not '1e-4'"),
    (dict(steps=[10]), "steps must be an integer, not [10]"),
    (dict(channels="1"), "channels must be an integer, not '1'"),
    (dict(sigma_range="0,55", sigma=None), "sigma_range must be a list of finite numbers (or absent)"),
    (dict(compile="yes"), "compile must be true or false"),
    (dict(model=3), "model must be a table"),
    (dict(schedule="cosine", min_lr=-1e-3), "min_lr must be >= 0"),
    (dict(schedule="multistep", milestones=[5], gamma=-0.5), "gamma must be > 0"),
])
def test_recipe_values_of_the_wrong_type_or_range_are_one_line_before_any_folder(tmp_path, gray_data,
                                                                                 settings, words):
    """Issue #37: text for a number, a list for a scalar and seeds numpy refuses were
    tracebacks (after making the run folder); a negative min_lr or gamma trained with a
    negative learning rate."""
    recipe = tmp_path / "bad.toml"
    base = dict(task="denoise", data=str(gray_data), sigma=25, steps=2, batch=2, patch=16, workers=0,
                arch="magn-tiny-local")
    base.update(settings)
    recipe.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in base.items() if v is not None) + "\n")
    result = runner.invoke(app, ["train", "--config", str(recipe), "--out", str(tmp_path / "run"), "--quiet"])
    assert isinstance(result.exception, MagnError), result.output
    assert words in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "run").exists()


def test_a_command_line_seed_out_of_range_is_refused(tmp_path, gray_data):
    result = runner.invoke(app, ["train", "--task", "denoise", "--data", str(gray_data), "--sigma", "25",
                                 "--seed", "-1", "--out", str(tmp_path / "run"), "--quiet"])
    assert isinstance(result.exception, MagnError) and "seed must be" in str(result.exception)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("signum, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_run_says_its_step_its_resume_point_and_the_command_to_continue(gray_data, tmp_path, signum,
                                                                                  code):
    """Issue #36: Ctrl-C or SIGTERM during `magn train`: one line with the step reached, the
    checkpoint it resumes from (the step in its state file) and the command that continues
    it, the run folder's claim released, 130/143; and that command continues it."""
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(config_to_toml(tiny_config(gray_data, steps=100000, ckpt_every=5)))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "magncli", "train", "--config", str(recipe), "--out", str(run)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not (run / STATE_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        time.sleep(0.3)                                     # a few steps past it, most likely
        proc.send_signal(getattr(signal, signum))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, err
    assert "Traceback" not in err and [p.name for p in tmp_path.iterdir() if p.name.endswith(".magn-lock")] == []
    resume_step = _weights(run / STATE_FILE)["step"]
    last_logged = max(r["step"] for r in read_log(run / LOG_FILE))
    (line,) = [line for line in err.splitlines() if line.startswith("stopped at step ")]
    reached = int(line.split()[3])
    assert reached >= max(resume_step, last_logged) and reached >= 5
    assert line == (f"stopped at step {reached} of 100000; it resumes from the checkpoint of step {resume_step}; "
                    f"to continue: magn train --resume --out {run}")
    command = shlex.split(line.split("; to continue: ")[1])
    result = runner.invoke(app, [*command[1:], "--steps", str(resume_step + 2), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _weights(run / STATE_FILE)["step"] == resume_step + 2


def test_a_resume_keeps_the_cosine_schedules_span(gray_data, tmp_path, one_thread):
    """steps is the cosine's span: a resume that changed it would change every later
    learning rate, so it is refused with how to train on; under a constant schedule,
    which does not read it, steps may change."""
    run = tmp_path / "run"
    Trainer(tiny_config(gray_data, steps=4, schedule="cosine", warmup_steps=1, ckpt_every=2), run).run(until=2)
    with pytest.raises(MagnError, match=r"span of the run's cosine schedule \(4 steps\).*--init-from"):
        Trainer(load_run_config(run, {"steps": 6}), run, resume=True)
    result = runner.invoke(app, ["train", "--resume", "--out", str(run), "--steps", "6", "--quiet"])
    assert isinstance(result.exception, MagnError) and "a resume keeps" in str(result.exception)
    resumed = Trainer(load_run_config(run, {"threads": 1}), run, resume=True)       # the same span: fine
    assert resumed.step == 2 and resumed.config.steps == 4
    resumed.close()
