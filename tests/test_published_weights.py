"""The checkpoints shipped in weights/: intact, loadable, published with their scores, and
serving every task out of the box (`magn restore` with no --weights) on gray and color.

The behaviour tests restore crops of benchmark images and compare against the degraded
input and a no-weights baseline computed here on the same crop (an independent oracle);
they need ../shared/datasets and are skipped without it."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from magncli.checkpoints import model_from_checkpoint, read_checkpoint
from magncli.cli.app import app
from magncli.datasets import load_ground_truth
from magncli.degrade import bayer_mosaic, jpeg_encode, mosaic_to_cfa
from magncli.errors import MagnError
from magncli.eval_methods import BASELINES
from magncli.images import Image, read_image, write_image
from magncli.metrics import psnr
from magncli.models import build_model
from magncli.models.registry import resolve_config
from magncli.restore import Restorer
from magncli.training.config import load_config
from magncli.training.lineage import is_lineage_recipe, read_lineage
from magncli.weights import file_sha256, load_manifest, select_default
from magncli.tasks import make_degradation

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"
SERVED = {("denoise", 1), ("denoise", 3), ("dejpeg", 1), ("dejpeg", 3), ("demosaic", 3)}

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("shipped_only")   # conftest: only weights/ serves


def _manifest():
    return load_manifest(WEIGHTS / "manifest.json")


def test_every_task_and_channel_count_has_a_shipped_default():
    manifest = _manifest()
    assert {(e.task, e.channels) for e in manifest.entries} == SERVED
    for task, channels in SERVED:
        assert select_default(task, channels).default


@pytest.mark.parametrize("name", [e.name for e in load_manifest(WEIGHTS / "manifest.json").entries])
def test_shipped_checkpoint_is_intact_half_precision_and_documented(name):
    entry = _manifest().get(name)
    path = WEIGHTS / entry.file
    assert path.stat().st_size == entry.size and file_sha256(path) == entry.sha256
    state, meta = read_checkpoint(path)
    assert all(t.dtype == torch.float16 for t in state.values() if t.is_floating_point())
    model = model_from_checkpoint(path)                           # strict: every key used
    assert model.config == {**model.config, **entry.config} and model.in_channels == entry.channels
    assert meta["task"] == entry.task
    for key in ("training_data", "steps", "hardware", "wall_time", "commit", "command"):
        assert entry.provenance.get(key), f"{name}: provenance lacks {key}"
    assert entry.scores and all(s["command"].startswith("magn eval ") for s in entry.scores)
    assert f"### {name}" in (WEIGHTS / "README.md").read_text()   # its model card


def test_readme_lists_exactly_the_manifests_checkpoints():
    """weights/README.md states what exists only in the part that `magn weights cards`
    (magncli/runs/cards.py) writes from the manifest: one card per checkpoint, in its order, none other, and the
    whole section is what the script would write now (no hand edit, no stale card)."""
    manifest = _manifest()
    text = (WEIGHTS / "README.md").read_text()
    head, cards = text.split("\n## Model cards\n", 1)
    assert re.findall(r"^### (.+)$", cards, re.M) == [e.name for e in manifest.entries]
    assert "\n### " not in head                          # no card in the hand-written part
    from magncli.runs import cards as model_cards
    assert model_cards.render(text, manifest, WEIGHTS) == text, "run magn weights cards"
    # Its hand-written intro ("each is the default ...") is refused once it stops being true.
    from dataclasses import replace
    changed = replace(manifest, entries=[replace(manifest.entries[0], default=False), *manifest.entries[1:]])
    with pytest.raises(MagnError, match="is not the default"):
        model_cards.render(text, changed, WEIGHTS)
    # A card names the variant a file is, or the nearest and what differs (a deepened file).
    demosaicer = manifest.get("magn-s-local-demosaic")                   # 6 ResBlocks a side
    assert model_cards._variant(demosaicer).startswith("`magn-s-local` with n_resblocks = 6 (")
    plain = replace(demosaicer, config=dict(demosaicer.config, n_resblocks=3))
    assert model_cards._variant(plain).startswith("`magn-s-local` (")
    # Every run before the one a checkpoint started from, oldest first, from the nested records.
    first = {"weights": "a", "step": 100, "commands": "magn train A"}
    second = {"weights": "b", "step": 30, "commands": "magn train B", "converted": "1 -> 3 channels", "from": first}
    third = {"weights": "c", "step": 10, "commands": "magn train C", "from": second}
    prov = {"sessions": [{"event": "start", "step": 0, "warm_start": third}]}
    assert model_cards._earlier_runs(prov) == ("`magn train A` to its step 100; then `magn train B` "
                                               "to its step 30 (converted, 1 -> 3 channels)")
    assert model_cards._earlier_runs({"sessions": [{"event": "start", "warm_start": first}]}) == ""


@pytest.mark.parametrize("name", [e.name for e in load_manifest(WEIGHTS / "manifest.json").entries])
def test_training_data_is_recorded_by_name_count_and_content_hash(name, data_root):
    """Never a path of the machine that trained it; the hash is recomputed from the set."""
    from magncli.datasets import list_images
    from magncli.training.data import ImageFiles
    data = _manifest().get(name).provenance["training_data"]
    assert set(data) == {"set", "images", "sha256"} and "/" not in data["set"]
    files = ImageFiles(data_root / data["set"], list_images(data_root / data["set"]))
    held_out = len(files.paths) - data["images"]          # images kept out for validation
    assert files.split_holdout(held_out)[0].describe() == data


@pytest.mark.parametrize("name", [e.name for e in load_manifest(WEIGHTS / "manifest.json").entries])
def test_the_recorded_training_command_rebuilds_the_checkpoint_config(name):
    """The recipes named in the provenance exist and give this checkpoint's task,
    architecture and step count (the last --steps of a resume, if any, wins)."""
    entry = _manifest().get(name)
    words = shlex.split(entry.provenance["command"].replace("; then ", " ; "))
    recipes = [REPO / words[i + 1] for i, w in enumerate(words) if w == "--config"]
    arch = [words[i + 1] for i, w in enumerate(words) if w == "--arch"]        # a variant override
    if any(is_lineage_recipe(r) for r in recipes):
        # The run was started from a path that has since become the checkpoint's lineage
        # recipe (train/recipes/NAME.toml): the stage that made this file has its settings.
        config = next(s.config for s in read_lineage(recipes[-1]).stages if s.made == entry.sha256)
    else:
        config = load_config(recipes, {"arch": arch[-1]} if arch else None)
    steps = [int(words[i + 1]) for i, w in enumerate(words) if w == "--steps"]
    assert config.task == entry.task and config.channels == entry.channels
    # Keys added to the architecture since (at defaults that change nothing) are filled in.
    assert (build_model(config.arch, in_channels=config.channels, **config.model).config
            == resolve_config(entry.arch, **entry.config)[1])
    # An export taken while the run went on (magn train --resume --export) has fewer steps.
    planned = entry.provenance.get("planned_steps", entry.provenance["steps"])
    assert (steps[-1] if steps else config.steps) == planned >= entry.provenance["steps"]


# Where a published checkpoint does not yet meet the bar (weights/README.md says so). The
# test pins this list exactly: a fix, or a new shortfall, must update it and the card.
KNOWN_SHORTFALLS = {   # {(checkpoint, set, level, baseline, "psnr" | "ssim")}
    # The color denoiser against CBM3D as the bm3d package runs it (stronger than the
    # published CBM3D figures the bars use): since the file of 2026-12-08 it is above on
    # CBSD68, Kodak24 and McMaster, and below on the Urban100 subset only (CBM3D's
    # self-similarity at home): 33.96 / 31.57 / 28.18 against 34.44 / 32.05 / 28.68.
    *(("magn-s-local-denoise-color", "Urban100_color_subset", f"σ{v}", "bm3d", m)
      for v in (15, 25, 50) for m in ("psnr", "ssim")),
}


@pytest.mark.parametrize("name", [e.name for e in load_manifest(WEIGHTS / "manifest.json").entries])
def test_recorded_scores_meet_the_bar_against_every_baseline_in_the_table(name):
    """The issues' bar, on the results the model card quotes: on every set and level the
    checkpoint beats every no-weights baseline evaluated beside it, in PSNR and in SSIM."""
    rows = json.loads((WEIGHTS / "results" / f"{name}.json").read_text())
    mine = {(r["set"], r["level"]): r for r in rows if r["model"] == name}
    baselines = [r for r in rows if r["model"] in BASELINES]
    assert mine and {r["model"] for r in baselines} >= {"input"}
    assert {(r["set"], r["level"]) for r in baselines} == set(mine)      # same sets and levels
    below = {(name, r["set"], r["level"], r["model"], metric) for r in baselines for metric in ("psnr", "ssim")
             if mine[(r["set"], r["level"])][metric] <= r[metric]}
    assert below == {k for k in KNOWN_SHORTFALLS if k[0] == name}
    # The manifest records each score to 4 decimals (rounding both to 2 would split a
    # score that ends in 5 at the third decimal).
    recorded = sorted((s["dataset"], s["psnr"]) for s in _manifest().get(name).scores)
    results = sorted((r["set"], r["psnr"]) for r in mine.values())
    assert [s for s, _ in recorded] == [s for s, _ in results]
    assert [p for _, p in recorded] == pytest.approx([p for _, p in results], abs=5e-5)


# Published defaults that still harm some clean or high-quality crop below; each is
# named in its model card. A fix must remove it here (strict xfail fails once it passes).
HARMS: set = set()


def _known_harm(task, mode):
    return pytest.mark.xfail((task, mode) in HARMS, strict=True,
                             reason=f"the published {mode} {task} default still harms some crops")


# The issues' bars on the default checkpoints' recorded scores (protocol PSNR): the
# published classical result + 0.1 dB, or a stated floor. Keyed by (task, channels):
# {(set, level): bar}. BAR_SHORTFALLS pins the points not yet met (the model card and
# the issue note say so); meeting one fails the test until it is removed here.
ISSUE_BARS = {
    ("denoise", 1): {  # #15: BM3D (published) + 0.1 on Set12 and BSD68; Set12 sigma 25 >= 30.07
        ("Set12", "σ15"): 32.47, ("Set12", "σ25"): 30.07, ("Set12", "σ50"): 26.82,
        ("BSD68", "σ15"): 31.17, ("BSD68", "σ25"): 28.67, ("BSD68", "σ50"): 25.72},
    ("denoise", 3): {  # #15: CBM3D (published) + 0.1 on CBSD68 and Kodak24; McMaster at most 0.3 below
        ("CBSD68", "σ15"): 33.62, ("CBSD68", "σ25"): 30.81, ("CBSD68", "σ50"): 27.48,
        ("Kodak24", "σ15"): 34.38, ("Kodak24", "σ25"): 31.78, ("Kodak24", "σ50"): 28.56,
        ("McMaster", "σ15"): 33.76, ("McMaster", "σ25"): 31.36, ("McMaster", "σ50"): 28.21},
    ("dejpeg", 1): {  # #16: ARCNN (published) + 0.1 on Classic5 and LIVE1 (Y)
        ("Classic5", "q10"): 29.13, ("Classic5", "q20"): 31.25, ("Classic5", "q30"): 32.61,
        ("Classic5", "q40"): 33.44, ("LIVE1", "q10"): 29.06, ("LIVE1", "q20"): 31.39,
        ("LIVE1", "q30"): 32.77, ("LIVE1", "q40"): 33.73},
    ("dejpeg", 3): {  # #16: LIVE1 RGB half way from the first color model to FBCNN
        ("LIVE1", "q10"): 27.04, ("LIVE1", "q20"): 29.46, ("LIVE1", "q30"): 30.77, ("LIVE1", "q40"): 31.64},
    ("demosaic", 3): {  # #17: IRCNN (published) + 0.1
        ("McMaster", "grbg"): 37.57, ("Kodak24", "grbg"): 40.51},
}
BAR_SHORTFALLS: set = set()                          # every bar met


@pytest.mark.parametrize("task,channels", sorted(ISSUE_BARS))
def test_the_default_checkpoint_meets_its_issue_bars(task, channels):
    entry = select_default(task, channels)
    rows = json.loads((WEIGHTS / "results" / f"{entry.name}.json").read_text())
    mine = {(r["set"], r["level"]): r["psnr"] for r in rows if r["model"] == entry.name
            and r["channels"] == ("gray" if channels == 1 else "color")}
    short = {(task, channels, *point) for point, bar in ISSUE_BARS[(task, channels)].items()
             if round(mine[point], 2) < bar}
    assert short == {k for k in BAR_SHORTFALLS if k[:2] == (task, channels)}


# #33: the default gray denoiser against DnCNN-B, the CNN a user would run instead, on
# the peer's rows evaluated beside it in the card's results (`magn eval -m
# dncnn:../shared/peers/dncnn_gray_blind.pth`, the same inputs), told sigma and blind.
# PEER_SHORTFALLS pins the points not yet met (the card and the issue note say so); a
# checkpoint that meets one fails this test until it is removed here.
GRAY_PEER = "dncnn_gray_blind.pth"
PEER_SHORTFALLS = {("Set12", level, use) for level in ("σ25", "σ50")   # 0.02-0.03 dB short there;
                   for use in ("told", "blind")}                   # BSD68 met since the 9-ResBlock file


def test_the_default_gray_denoiser_against_dncnn_b():
    entry = select_default("denoise", 1)
    rows = json.loads((WEIGHTS / "results" / f"{entry.name}.json").read_text())
    peer = {(r["set"], r["level"]): r["psnr"] for r in rows if r["model"].endswith(GRAY_PEER)}
    assert {s for s, _ in peer} >= {"Set12", "BSD68"}                       # the peer was scored beside it
    short = set()
    for use, name in (("told", entry.name), ("blind", f"{entry.name} (blind)")):
        mine = {(r["set"], r["level"]): r["psnr"] for r in rows if r["model"] == name}
        assert set(mine) >= set(peer), use
        short |= {(*point, use) for point, theirs in peer.items() if round(mine[point], 2) < round(theirs, 2)}
    assert short == PEER_SHORTFALLS


# #33: the default color denoiser against FFDNet told sigma (the bar: told >= FFDNet at
# every point, blind within 0.1 dB of it), on FFDNet's rows evaluated beside it in the
# card's results (`magn eval -m ffdnet:../shared/peers/ffdnet_color.pth`, the same inputs).
COLOR_PEER = "ffdnet_color.pth"
COLOR_PEER_SHORTFALLS = {  # the file of 2026-12-08: CBSD68 sigma 15 and 25 met (told and blind)
    ("CBSD68", "σ50", "told"), *((s, f"σ{v}", "told") for s in ("Kodak24", "McMaster") for v in (15, 25, 50)),
    ("Kodak24", "σ50", "blind"), *(("McMaster", f"σ{v}", "blind") for v in (15, 25, 50))}


def test_the_default_color_denoiser_against_ffdnet():
    entry = select_default("denoise", 3)
    rows = json.loads((WEIGHTS / "results" / f"{entry.name}.json").read_text())
    peer = {(r["set"], r["level"]): r["psnr"] for r in rows if r["model"].endswith(COLOR_PEER)}
    assert {s for s, _ in peer} >= {"CBSD68", "Kodak24", "McMaster"}         # the peer was scored beside it
    short = set()
    for use, name, allowance in (("told", entry.name, 0.0), ("blind", f"{entry.name} (blind)", 0.1)):
        mine = {(r["set"], r["level"]): r["psnr"] for r in rows if r["model"] == name}
        assert set(mine) >= set(peer), use
        short |= {(*point, use) for point, theirs in peer.items()
                  if round(mine[point], 2) < round(theirs - allowance, 2)}
    assert short == COLOR_PEER_SHORTFALLS


HIGH_QUALITIES = ("q50", "q60", "q70", "q80", "q90", "q95")
# Images a default still makes worse than their JPEG by more than 0.05 dB (its card says so).
HIGH_QUALITY_HARMS: set = set()


@pytest.mark.parametrize("mode,set_name", [pytest.param("gray", "Classic5", marks=_known_harm("dejpeg", "gray")),
                                           pytest.param("color", "Kodak24", marks=_known_harm("dejpeg", "color"))])
def test_the_jpeg_default_improves_every_high_quality_level_and_harms_no_image(mode, set_name):
    """#16's bar on the recorded results: at q50-95 the default is at least 0.05 dB above
    the JPEG on the set, and no image of the set is worse than its JPEG by more than 0.05."""
    entry = select_default("dejpeg", 1 if mode == "gray" else 3)
    rows = json.loads((WEIGHTS / "results" / f"{entry.name}.json").read_text())
    scored = {(r["model"], r["level"]): r for r in rows if r["set"] == set_name and r["channels"] == mode}
    harmed = set()
    for level in HIGH_QUALITIES:
        assert (entry.name, level) in scored, f"{entry.name} is not evaluated at {level}"
        mine, jpeg = scored[(entry.name, level)], scored[("input", level)]
        assert mine["psnr"] >= jpeg["psnr"] + 0.05, level
        before = {i["name"]: i["psnr"] for i in jpeg["images"]}
        harmed |= {(entry.name, level, i["name"]) for i in mine["images"] if i["psnr"] < before[i["name"]] - 0.05}
    assert harmed == {k for k in HIGH_QUALITY_HARMS if k[0] == entry.name}


# --------------------------------------------------------------------------- out of the box

def _crop(image: np.ndarray, size: int = 96) -> np.ndarray:
    return np.ascontiguousarray(image[:size, :size])


@pytest.mark.parametrize("set_name,stem,mode", [("Set12", "05", "gray"), ("Kodak24", "kodim05", "color")])
def test_denoise_out_of_the_box_beats_nlm(data_root, set_name, stem, mode):
    truth = _crop(load_ground_truth(data_root / set_name / f"{stem}.png", mode))
    degradation = make_degradation("denoise", 25)
    noisy = degradation.apply(truth)
    out, info = Restorer(task="denoise").restore(Image(noisy))
    nlm = BASELINES["opencv-nlm"].restore(noisy, degradation)
    assert info["model"] == select_default("denoise", 1 if mode == "gray" else 3, 25).file
    assert psnr(out.to_float(), truth) > psnr(nlm, truth) > psnr(noisy, truth, clamp=False)


NO_HARM_CROPS = {"gray": [("Set12", "05"), ("Set12", "08"), ("BSD68", "test004")],
                 "color": [("Kodak24", "kodim05"), ("McMaster", "1"), ("McMaster", "7")]}


@pytest.mark.parametrize("mode", [pytest.param(m, marks=_known_harm("denoise", m)) for m in ("gray", "color")])
def test_denoise_does_not_harm_clean_or_nearly_clean_crops(data_root, mode):
    """#15: at sigma 5 the output is closer to the clean image than its input is; at
    sigma 0 (nothing to remove: the input is exact, infinitely far above any output) the
    output stays within 40 dB of it, the change sigma-2.5 noise would make."""
    for set_name, stem in NO_HARM_CROPS[mode]:
        source = next((data_root / set_name).glob(f"{stem}.*"))
        truth = _crop(load_ground_truth(source, mode), 128)
        restorer = Restorer(task="denoise")
        clean_out, _ = restorer.restore(Image(truth))
        assert psnr(clean_out.to_float(), truth) >= 40.0, (set_name, stem)
        noisy = make_degradation("denoise", 5).apply(truth)
        out, _ = restorer.restore(Image(noisy))
        assert psnr(out.to_float(), truth) > psnr(noisy, truth, clamp=False), (set_name, stem)


@pytest.mark.parametrize("mode", [pytest.param(m, marks=_known_harm("dejpeg", m)) for m in ("gray", "color")])
def test_dejpeg_never_makes_a_good_jpeg_worse(data_root, tmp_path, mode):
    """#16: `magn restore photo.jpg --task dejpeg` on JPEGs as cameras and the web save
    them (q50-95, read from the file's tables): never worse than the JPEG itself."""
    crops = [("Classic5", "barbara"), ("Classic5", "boats")] if mode == "gray" else \
        [("Kodak24", "kodim05"), ("Kodak24", "kodim23")]
    from PIL import Image as PILImage
    restorer = Restorer(task="dejpeg")
    for set_name, stem in crops:
        source = next((data_root / set_name).glob(f"{stem}.*"))
        truth = _crop(load_ground_truth(source, mode), 128)
        pixels = np.round(truth * 255).astype(np.uint8).squeeze()
        files = {f"q{q}": (jpeg_encode(truth, q), q) for q in (50, 75, 90, 95)}   # 4:2:0 for color
        if mode == "color":
            once = tmp_path / "once.jpg"
            PILImage.fromarray(pixels).save(once, quality=90, subsampling=0)           # 4:4:4
            files["q90 4:4:4"] = (once.read_bytes(), 90)
            PILImage.open(once).save(tmp_path / "twice.jpg", quality=60)              # saved again
            files["q90 then q60"] = ((tmp_path / "twice.jpg").read_bytes(), 60)
        for label, (data, quality) in files.items():
            jpeg = tmp_path / f"{stem}.jpg"
            jpeg.write_bytes(data)
            image = read_image(jpeg)
            out, info = restorer.restore(image)
            assert info["quality"] == quality and image.channels == truth.shape[2]
            assert psnr(out.to_float(), truth) >= psnr(image.to_float(), truth), (stem, label)


@pytest.mark.parametrize("set_name,stem,mode,quality", [("Classic5", "lena", "gray", 10),
                                                         ("Kodak24", "kodim05", "color", 20)])
def test_dejpeg_out_of_the_box_reads_the_quality_and_improves_the_jpeg(data_root, tmp_path, set_name,
                                                                     stem, mode, quality):
    source = next((data_root / set_name).glob(f"{stem}.*"))
    truth = _crop(load_ground_truth(source, mode), 128)
    clean = tmp_path / "clean.png"
    write_image(clean, Image(np.round(truth * 255).astype(np.uint8)))     # exact: 8-bit source
    made = runner.invoke(app, ["degrade", str(clean), "--task", "dejpeg", "--quality", str(quality),
                               "--format", "jpg", "-o", str(tmp_path / "jpeg")])
    assert made.exit_code == 0, made.output
    jpeg = tmp_path / "jpeg" / "clean.jpg"
    result = runner.invoke(app, ["restore", str(jpeg), "--task", "dejpeg", "-o", str(tmp_path / "out"),
                                 "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout.strip().splitlines()[-1])
    default = select_default("dejpeg", 1 if mode == "gray" else 3).file
    assert record["quality"] == quality and record["model"] == default
    # The line on stderr says it too: what it assumed and which model ran.
    line = " ".join(result.stderr.split())                   # undo rich's wrapping
    subsampling = "none" if mode == "gray" else "4:2:0"                    # a gray JPEG has no chroma
    assert f"quality {quality} from the JPEG tables, subsampling {subsampling}, model {default}" in line
    restored = read_image(record["output"]).to_float()
    compressed = read_image(jpeg).to_float()
    assert psnr(restored, truth) > psnr(compressed, truth) + 0.3


@pytest.mark.parametrize("pattern", ["grbg", "rggb", "gbrg", "bggr"])
def test_demosaic_out_of_the_box_beats_opencv_on_every_pattern(data_root, pattern):
    # A crop of Kodak24 (kodim05's fine detail), tested for every pattern.
    # A pattern served at the wrong phase would fall far below VNG.
    truth = _crop(load_ground_truth(data_root / "Kodak24" / "kodim05.png", "color"), 96)
    cfa = mosaic_to_cfa(bayer_mosaic(truth, pattern))[..., None]             # (H, W, 1)
    out, _ = Restorer(task="demosaic", pattern=pattern).restore(Image(cfa))
    degradation = make_degradation("demosaic", pattern=pattern)
    vng = BASELINES["opencv-vng"].restore(bayer_mosaic(truth, pattern), degradation)
    assert out.to_float().shape == truth.shape
    assert psnr(out.to_float(), truth) > psnr(vng, truth)


@pytest.mark.parametrize("name", [e.name for e in load_manifest(WEIGHTS / "manifest.json").entries])
def test_no_path_of_the_training_machine_is_published(name):
    import re
    entry = _manifest().get(name)
    _, meta = read_checkpoint(WEIGHTS / entry.file)
    for text in (json.dumps(meta), json.dumps(entry.provenance)):
        assert not re.search(r"(^|[\s\"'=])/(root|home|work|Users|tmp)/", text), text[:200]


def test_no_path_of_this_machine_in_the_published_texts():
    """The manifest (its scores' commands too), the results files and the model cards."""
    import re
    files = [WEIGHTS / "manifest.json", WEIGHTS / "README.md", REPO / "README.md",
             *sorted((WEIGHTS / "results").glob("*.json")), *sorted((WEIGHTS / "results").glob("*.md"))]
    for path in files:
        found = re.search(r"(^|[\s\"'=])/(root|home|work|Users|tmp)/\S*", path.read_text())
        assert not found, f"{path.name}: {found.group(0)}"


def test_the_architecture_doc_says_which_graphs_each_shipped_checkpoint_has():
    """docs/architecture.md's table of graphs, ResBlocks, level map and QK-norm is the files'
    (read from each file's own keys by the architecture's detector, not from the manifest)."""
    from magncli.models.registry import detect_arch
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = {}
    for line in doc.split("## Which graphs the shipped checkpoints have")[1].split("\n## ")[0].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith("magn-"):
            table[cells[0]] = tuple(cells[1:])
    assert set(table) == {e.name for e in _manifest().entries}
    for name, row in table.items():
        state, meta = read_checkpoint(WEIGHTS / f"{name}.safetensors")
        _, config = detect_arch(state)
        level = {"denoise": "sigma", "dejpeg": "quality"}[meta["task"]] if config["level_input"] else "no"
        yes = lambda flag: "yes" if flag else "no"  # noqa: E731
        assert row == (yes(config["global_graph"]), yes(config["local_graph"]), str(config["n_resblocks"]),
                       level, yes(config["qk_norm"])), name
