"""`magn eval` through the Typer app, on images the tests make."""
import csv
import json
import shlex
import subprocess
import sys
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from magncli.cli.app import app
from magncli.datasets import load_image
from magncli.degrade import bayer_mosaic

from cli_testkit import make_images, runner, user_error


def test_eval_writes_json_csv_md_and_a_sheet(tmp_path):
    folder = tmp_path / "set"
    make_images(folder, n=3)
    base = ["eval", "--task", "denoise", "--sets", str(folder), "--levels", "15,50",
            "-m", "input", "-m", "opencv-nlm"]
    result = runner.invoke(app, base + ["-o", str(tmp_path / "r.json"), "-o", str(tmp_path / "r.md"),
                                        "--sheet", str(tmp_path / "sheet.png"),
                                        "--save-images", str(tmp_path / "restored")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["model"], r["level"]) for r in rows] == [
        ("input", "σ15"), ("opencv-nlm", "σ15"), ("input", "σ50"), ("opencv-nlm", "σ50")]
    assert rows[0]["channels"] == "color" and rows[0]["n_images"] == 3
    assert rows[2]["degradation"] == {"task": "denoise", "sigma": 50, "seed": 0}
    assert len(rows[0]["images"]) == 3
    assert all(r["psnr"] > i["psnr"] for r, i in zip(rows[1::2], rows[::2]))
    saved = tmp_path / "restored" / "opencv-nlm" / "set" / "sigma50" / "img2.png"
    assert cv2.imread(str(saved)).shape == (48, 64, 3)
    sheet = cv2.imread(str(tmp_path / "sheet.png"))
    assert sheet is not None and sheet.shape[0] > 2 * 48  # one strip per level

    result = runner.invoke(app, base + ["-o", str(tmp_path / "r.csv"), "--quantize"])
    assert result.exit_code == 0, result.output
    lines = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [(r["model"], r["sigma"]) for r in lines] == [
        ("input", "15"), ("opencv-nlm", "15"), ("input", "50"), ("opencv-nlm", "50")]
    assert lines[0]["quantize"] == "True"
    # Scoring the 8-bit rounded noisy input moves its PSNR, but only a little.
    assert 0 < abs(float(lines[0]["psnr"]) - rows[0]["psnr"]) < 0.1
    markdown = (tmp_path / "r.md").read_text()
    assert "| opencv-nlm |" in markdown and f"{rows[1]['psnr']:.2f}" in markdown


def test_eval_scores_color_jpeg_on_rgb_and_y(tmp_path):
    make_images(tmp_path / "set")
    result = runner.invoke(app, ["eval", "--task", "dejpeg", "--sets", str(tmp_path / "set"),
                                 "--levels", "20", "-m", "input", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["channels"] == "color" and {"psnr_y", "ssim_y"} <= set(row["images"][0])


def test_eval_scores_the_default_checkpoint_beside_the_input_when_no_model_is_named(tmp_path):
    """Without -m: the rows input and default; default is the checkpoint `magn restore`
    picks for the task and each set's channels, and scores as that checkpoint named."""
    make_images(tmp_path / "color", n=1)
    make_images(tmp_path / "gray", n=1, color=False)
    sets = f"{tmp_path / 'color'},{tmp_path / 'gray'}"
    result = runner.invoke(app, ["eval", "--task", "dejpeg", "--sets", sets, "--levels", "20",
                                 "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [(r["set"], r["model"], r.get("checkpoint")) for r in rows] == [
        ("color", "input", None), ("color", "default", "magn-s-local-dejpeg-color"),
        ("gray", "input", None), ("gray", "default", "magn-s-local-dejpeg-gray")]
    named = runner.invoke(app, ["eval", "--task", "dejpeg", "--sets", str(tmp_path / "color"), "--levels", "20",
                                "-m", "magn-s-local-dejpeg-color", "-o", str(tmp_path / "named.json")])
    assert named.exit_code == 0, named.output
    assert json.loads((tmp_path / "named.json").read_text())[0]["psnr"] == rows[1]["psnr"]
    assert rows[1]["psnr"] > rows[0]["psnr"]                           # the model restores


def test_eval_accepts_degraded_inputs_and_one_channel_cfa(tmp_path):
    sources = make_images(tmp_path / "set", n=2)
    cfa_dir = tmp_path / "cfa"
    cfa_dir.mkdir()
    for source in sources:  # a raw sensor file: one channel, GRBG
        cfa = bayer_mosaic(load_image(source)).sum(axis=2)
        cv2.imwrite(str(cfa_dir / source.name), np.round(cfa * 255).astype(np.uint8))
    result = runner.invoke(app, ["eval", "--task", "demosaic", "--sets", str(tmp_path / "set"),
                                 "--inputs", str(cfa_dir), "-m", "input", "-m", "opencv-vng",
                                 "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())
    internal = runner.invoke(app, ["eval", "--task", "demosaic", "--sets", str(tmp_path / "set"),
                                   "-m", "input", "-o", str(tmp_path / "internal.json")])
    assert internal.exit_code == 0, internal.output
    assert rows[0]["psnr"] == json.loads((tmp_path / "internal.json").read_text())[0]["psnr"]
    assert rows[1]["psnr"] > rows[0]["psnr"] + 10


def test_eval_user_errors_are_one_line(tmp_path):
    folder = tmp_path / "set"
    make_images(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    small = tmp_path / "small"
    make_images(small, size=(40, 64))  # same names, wrong size

    def run(*args):
        return runner.invoke(app, ["eval", "--task", "denoise", "--levels", "25", *args])

    message = user_error(run("--sets", "NoSuchSet"), "unknown test set", "NoSuchSet")
    assert "Set12" in message and "Classic5" in message  # lists the known sets
    user_error(run("--sets", str(empty)), "no image files")
    # A bad set after a good one fails before the good one is scored (nothing printed).
    late = run("--sets", f"{folder},NoSuchSet")
    user_error(late, "unknown test set", "NoSuchSet")
    assert " dB" not in late.output
    user_error(run("--sets", str(folder), "--inputs", str(small)), "size mismatch", "img0")
    user_error(run("--sets", str(folder), "-m", "opencv-vng"), "does not do denoise")
    (tmp_path / "r.json").write_text("{}")
    user_error(run("--sets", str(folder), "-o", str(tmp_path / "r.json")), "already exists")
    user_error(run("--sets", str(folder), "-o", str(tmp_path / "r.txt")), ".json")
    # A level is echoed as it was typed (the list is parsed as numbers: not "got 0.0").
    quality = user_error(runner.invoke(app, ["eval", "--task", "dejpeg", "--levels", "0", "--sets", str(folder)]),
                         "quality must be an integer from 1 to 100")
    sigma = user_error(runner.invoke(app, ["eval", "--task", "denoise", "--levels", "-5", "--sets", str(folder)]),
                       "sigma must be a number >= 0")
    assert quality.endswith("got 0") and sigma.endswith("got -5")


def test_the_real_command_prints_one_line_and_exits_1(tmp_path):
    result = subprocess.run([sys.executable, "-m", "magncli", "eval", "--task", "denoise",
                             "--sets", "NoSuchSet", "--data-root", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("magn: error: unknown test set 'NoSuchSet'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_results_record_the_command_that_made_them(tmp_path):
    folder = tmp_path / "set"
    make_images(folder, n=1)
    args = ["eval", "--task", "denoise", "--sets", str(folder), "--levels", "25", "-m", "input",
            "-o", str(tmp_path / "r.json")]
    result = subprocess.run([sys.executable, "-m", "magncli", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "r.json").read_text())
    assert rows[0]["command"] == shlex.join(["magn", *args])


@pytest.mark.datasets
def test_eval_cli_reproduces_a_published_input_row(data_root, tmp_path):
    result = runner.invoke(app, ["eval", "--task", "dejpeg", "--sets", "Classic5", "--levels", "10",
                                 "-m", "input", "--data-root", str(data_root), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert round(row["psnr"], 2) == 27.82 and row["set"] == "Classic5"
    assert "27.82" in result.output  # the printed table
    wrong_task = runner.invoke(app, ["eval", "--task", "denoise", "--sets", "Classic5",
                                     "--data-root", str(data_root)])
    user_error(wrong_task, "not a test set for denoise", "Set12")


def test_eval_runs_checkpoint_models_through_load_model_and_the_engine(tmp_path, monkeypatch):
    """eval hands each checkpoint spec (with its arch prefix) to load_model and the
    engine options to the engine (through tasks.restore_for_task, as its plan); the
    loader and the engine's run are replaced by recorders here."""
    import magncli
    import magncli.inference as inference
    import magncli.models.registry as registry
    from magncli.inference import InferenceOptions

    calls = []

    def load_model(weights, arch="auto"):
        calls.append(("load", weights, arch))
        return "the-model"

    def restore_planned(model, image, plan, progress=None):
        calls.append(("restore", model, image.shape, plan))
        return cv2.GaussianBlur(image, (0, 0), 1.0).reshape(image.shape)  # a crude denoiser

    monkeypatch.setattr(magncli, "load_model", load_model, raising=False)
    monkeypatch.setattr(inference, "restore_planned", restore_planned)
    monkeypatch.setattr(registry, "list_archs", lambda: {"dagl": SimpleNamespace(variants={"dagl-demosaic": {}})})
    make_images(tmp_path / "set", n=2, color=False)

    result = runner.invoke(app, ["eval", "--task", "denoise", "--sets", str(tmp_path / "set"),
                                 "--levels", "50", "-m", "input", "-m", "dagl:w.pt", "-m", "x.pt",
                                 "-m", "dagl-demosaic:d.pt", "-m", "magn:y.pt", "--tile", "32", "--ensemble", "--device", "cpu",
                                 "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert ("load", "w.pt", "dagl") in calls and ("load", "x.pt", "auto") in calls
    assert ("load", "d.pt", "dagl-demosaic") in calls                  # a variant names its arch too
    assert ("load", "magn:y.pt", "auto") in calls                      # not registered here: a path
    restores = [c for c in calls if c[0] == "restore"]
    assert len(restores) == 8 and restores[0][2] == (48, 64, 1)  # HxWxC, gray kept
    plan = restores[0][3]
    assert (plan.device.type, plan.tile, plan.overlap, plan.ensemble) == ("cpu", 32, 16, True)
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in rows] == ["input", "dagl:w.pt", "x.pt", "dagl-demosaic:d.pt", "magn:y.pt"]
    assert rows[1]["tile"] == 32 and rows[1]["ensemble"] is True
    assert rows[1]["overlap"] == InferenceOptions().overlap and rows[1]["tiling"] == "blend"
    assert rows[1]["psnr"] > rows[0]["psnr"] + 3


@pytest.mark.parametrize("option, value", [("--levels", ","), ("--levels", ""), ("--levels", "15,,25"),
                                           ("--levels", "15,x"), ("--levels", "nan"), ("--sets", ","),
                                           ("--sets", "Set12,")])
def test_eval_refuses_an_empty_or_malformed_list(tmp_path, option, value, monkeypatch):
    import magncli.cli.eval as eval_cli
    monkeypatch.setattr(eval_cli, "run_eval", lambda *a, **k: pytest.fail("ran with defaults"))
    args = ["eval", "--task", "denoise", "--sets", "Set12", "--levels", "25"]
    args[args.index(option) + 1] = value
    user_error(runner.invoke(app, args), option, repr(value))


def test_eval_blind_adds_a_row_for_each_model_with_a_level_map(tmp_path):
    """--blind: a denoiser with a level map is scored told the sigma and, in a row of its
    own, not told (the map says unknown: what restore does without --sigma); a model
    without a map, and FFDNet (which has no blind use), get no such row."""
    import torch

    from magncli.checkpoints import save_checkpoint
    from magncli.models.registry import build_model
    folder = tmp_path / "set"
    make_images(folder, n=2)
    torch.manual_seed(0)
    told = build_model("magn", in_channels=3, level_input=True, n_feats=8, n_resblocks=1, n_graphblocks=1,
                       patch_channels=4, patch_embed=8)
    with torch.no_grad():                                   # a tail that says something
        told.tail.weight.normal_(0, 0.05)
    save_checkpoint(tmp_path / "told.safetensors", told)
    save_checkpoint(tmp_path / "ffdnet.safetensors", build_model("ffdnet", n_feats=8, n_convs=3))
    told, ffdnet = str(tmp_path / "told.safetensors"), str(tmp_path / "ffdnet.safetensors")
    result = runner.invoke(app, ["eval", "--task", "denoise", "--sets", str(folder), "--levels", "25",
                                 "-m", "input", "-m", told, "-m", ffdnet, "--blind", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in rows] == ["input", told, f"{told} (blind)", ffdnet]
    assert rows[1]["psnr"] != rows[2]["psnr"]               # the map is heard: -1 is not 0.5
    result = runner.invoke(app, ["eval", "--task", "denoise", "--sets", str(folder), "--levels", "25",
                                 "-m", told, "-o", str(tmp_path / "plain.json")])
    assert [r["model"] for r in json.loads((tmp_path / "plain.json").read_text())] == [told]


def test_an_out_of_range_seed_is_one_line(tmp_path):
    folder = tmp_path / "set"
    make_images(folder)
    for seed in ("-1", str(2 ** 32)):
        user_error(runner.invoke(app, ["eval", "--task", "denoise", "--levels", "25", "--sets", str(folder),
                                       "--seed", seed]), "seed must be an integer from 0 to 4294967295")


def test_given_inputs_are_labelled_by_their_manifest_not_by_the_levels_asked(tmp_path):
    """Issue #37: sigma-25 inputs from `magn degrade` given with --levels 50 were scored
    and labelled as sigma 50."""
    make_images(tmp_path / "set")
    made = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", "denoise", "--sigma", "25",
                               "--seed", "7", "--format", "tiff", "-o", str(tmp_path / "noisy")])
    assert made.exit_code == 0, made.output
    args = ["eval", "--task", "denoise", "--sets", str(tmp_path / "set"), "--inputs", str(tmp_path / "noisy"),
            "-m", "input"]
    user_error(runner.invoke(app, args + ["--levels", "50"]), "inputs of σ25", "not σ50")
    result = runner.invoke(app, args + ["-o", str(tmp_path / "r.json")])     # no --levels: the recorded one
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r.json").read_text())[0]
    assert row["degradation"] == {"task": "denoise", "sigma": 25, "seed": 7}
    internal = runner.invoke(app, ["eval", "--task", "denoise", "--sets", str(tmp_path / "set"), "--levels", "25",
                                   "--seed", "7", "-m", "input", "-o", str(tmp_path / "internal.json")])
    assert internal.exit_code == 0
    assert row["psnr"] == json.loads((tmp_path / "internal.json").read_text())[0]["psnr"]



@pytest.mark.parametrize("task, made_with, asked", [("dejpeg", ["--quality", "20"], []),
                                                    ("demosaic", ["--pattern", "rggb"], ["--pattern", "rggb"])])
def test_given_inputs_of_a_task_without_noise_seeds_are_read_by_their_manifest(tmp_path, task, made_with, asked):
    """A JPEG or mosaic folder from `magn degrade` records no seed (nothing random made
    it): its manifest is read all the same (the default seed stood in, by a name the
    module had lost)."""
    make_images(tmp_path / "set")
    made = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", task, *made_with, "-o", str(tmp_path / "in")])
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["eval", "--task", task, "--sets", str(tmp_path / "set"), "--inputs",
                                 str(tmp_path / "in"), *asked, "-m", "input", "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r.json").read_text())[0]
    assert "seed" not in row["degradation"] and row["degradation"]["task"] == task

def test_a_sheet_not_named_png_is_refused_before_any_work(tmp_path):
    """Issue #37: --sheet x.jpg wrote PNG bytes under a .jpg name."""
    make_images(tmp_path / "set")
    result = runner.invoke(app, ["eval", "--task", "denoise", "--levels", "25", "--sets", str(tmp_path / "set"),
                                 "-m", "input", "--sheet", str(tmp_path / "x.jpg")])
    user_error(result, "x.jpg", ".png")
    assert not (tmp_path / "x.jpg").exists()


def test_eval_encodes_at_the_subsampling_asked_and_labels_and_records_it(tmp_path):
    make_images(tmp_path / "set")
    rows = {}
    for asked in ("444", None):
        out = tmp_path / f"{asked}.json"
        result = runner.invoke(app, ["eval", "--task", "dejpeg", "--sets", str(tmp_path / "set"), "--levels", "50",
                                     *(["--subsampling", asked] if asked else []), "-m", "input", "-o", str(out)])
        assert result.exit_code == 0, result.output
        (rows[asked],) = json.loads(out.read_text())
    assert rows["444"]["degradation"]["subsampling"] == "4:4:4" and rows["444"]["level"] == "q50 4:4:4"
    assert rows[None]["degradation"]["subsampling"] == "4:2:0" and rows[None]["level"] == "q50"
    assert rows["444"]["psnr"] > rows[None]["psnr"]          # full-resolution chroma keeps more


def test_given_jpeg_inputs_of_another_subsampling_are_refused(tmp_path):
    make_images(tmp_path / "set")
    made = runner.invoke(app, ["degrade", str(tmp_path / "set"), "--task", "dejpeg", "--quality", "50",
                               "--subsampling", "444", "-o", str(tmp_path / "in")])
    assert made.exit_code == 0, made.output
    args = ["eval", "--task", "dejpeg", "--sets", str(tmp_path / "set"), "--inputs", str(tmp_path / "in"),
            "-m", "input", "-o", str(tmp_path / "r.json")]
    user_error(runner.invoke(app, args), "q50 4:4:4")
    result = runner.invoke(app, [*args, "--subsampling", "444"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())[0]["degradation"]["subsampling"] == "4:4:4"
