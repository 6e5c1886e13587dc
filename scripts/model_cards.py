"""Regenerate the "Model cards" section of weights/README.md from the manifest and the
`magn eval` results in weights/results/, so that a card never quotes a number the results
files do not hold, and the README never lists a checkpoint the manifest does not (or
misses one it does).

    python scripts/model_cards.py          # rewrites weights/README.md from "## Model cards" on
    python scripts/model_cards.py --check  # exit 1 if the README is not what it would write

The text above "## Model cards" is hand-written and must not say which checkpoints
exist; tests/test_published_weights.py checks that the README is this script's output.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magncli.models.registry import FILE_KEYS, build_model, get_arch, resolve_config  # noqa: E402
from magncli.training.runstate import first_warm_start  # noqa: E402
from magncli.weights import load_manifest  # noqa: E402

README = REPO / "weights" / "README.md"
HEADING = "## Model cards"

# INTRO states facts about every listed checkpoint; _check_intro refuses to write it
# when the manifest no longer fits them (then rewrite INTRO).
INTRO = """\
{count} checkpoints are published, one per task and channel count; each is the default that
`magn restore` picks. **None of them is the paper's MAGN.** No GPU has been available to
the project, so each is a CPU variant (docs/architecture.md, "Variants") trained on the
development machine's 2-core CPU (AMD EPYC); its card names the variant and its size,
the CPU-hours, every session of its run, and the curve of validation PSNR against
CPU-hours.

- Data: Train400 (gray) and CBSD432 (color) stand in for the paper's DIV2K, recorded by
  name, image count and content hash. Runs from `train/cpu-s.toml` on validate on images
  held out of the training set; the first `magn-tiny-local` runs validated on test sets
  (their recipes of the time), and none of them trained on a test set.
- Storage: fp16 safetensors, the export of `magn train` (EMA weights). Scored beside the
  fp32 weights they were rounded from, the fp16 files lose nothing that matters (0.001-
  0.003 dB; the demosaicer's card has its check).
- Scores: `magn eval` on every standard set of the task, beside the `input` row and the
  no-weights baselines. Settings: CPU, fp32, tile 64, overlap 16, no ensemble, seed 0;
  PSNR in dB / SSIM, and for color JPEG also Y. "s/img" is the mean seconds per image on
  the CPU, which other work often shared.
- How each was made: `train/README.md` (recipes, the variant study, long runs and
  publishing).
"""

NOTES = {  # what a card must say beyond its table
    "magn-s-local-demosaic": (
        "- **Five runs.** The first began from `magn-s-local-denoise-color` (the same variant and "
        "channels; a 600-step probe reached held-out 32.69 dB this way, 28.44 from scratch) and "
        "trained 100000 steps of `train/demosaic.toml` with `train/cpu-s.toml` on all four Bayer "
        "phases, chroma scaled up to 3x; its best held-out validation (step 84000) was "
        "published: McMaster 36.46, Kodak24 41.50, Urban100 subset 37.41. A second, with "
        "grain, was stopped at step 12000 for the third: 30000 steps from that one on GRBG alone "
        "(`train/demosaic.toml` now), with `train/warm-start.toml` and `train/demosaic-film.toml` "
        "(grain up to sigma 4, chroma up to 5x), published at its last step (McMaster 37.03, "
        "Kodak24 41.39, Urban100 subset 37.58). The fourth deepened that file to 6 ResBlocks a "
        "side (`train/deeper.toml`; the new blocks start as the identity) and trained 8000 steps; "
        "the fifth, which made this file, continued its weights 22000 steps with patches cut "
        "from the training photos shrunk by a factor in [0.3, 1] (`train/demosaic-scale.toml`; "
        "1.50 CPU-hours of its own), exported at its last step. The "
        "CPU-hours include the denoisers' and every earlier run's.\n"
        "- **Shrunk patches** were the lever: CBSD432's photos are soft JPEGs, McMaster's film "
        "scans are sharp. In 2500-step probes from the file before this one, McMaster went "
        "37.01 -> 37.56 and Kodak24 41.36 -> 40.93 (train/README.md, \"Shrunk patches\").\n"
        "- **Against the file it replaces:** McMaster 37.03 -> 38.17, Urban100 subset 37.58 -> "
        "37.89, Kodak24 41.39 -> 41.02, the 24 held-out CBSD432 images 41.42 -> 41.15 "
        "(fp32, as `magn eval` runs; they are seen at their own scale, which the shrunk "
        "patches trade for McMaster's).\n"
        "- **Against #17's bars** (published IRCNN + 0.1 dB): McMaster 38.17 against 37.57 and "
        "Kodak24 41.02 against 40.51, both met; the stretch, McMaster 38.5, is 0.33 dB "
        "away. Per image it beats OpenCV VNG on every image of the three sets, in PSNR and in "
        "SSIM.\n"
        "- fp16 storage: the fp32 EMA weights score McMaster 38.1714 dB / 0.966104 and Kodak24 41.0202 / 0.984138; this fp16 file 38.1708 / 0.966098 and 41.0183 / 0.984135, within 0.002 dB.\n"
        "- One GRBG model serves all four Bayer patterns (others are shifted into phase) and "
        "1-channel CFA files; `tests/test_published_weights.py` restores each pattern."),
    "magn-s-local-denoise-gray": (
        "- **Told sigma, or blind.** One checkpoint for known noise (`magn restore --sigma S`, "
        "the protocol's sigma in `magn eval`) and blind use (no `--sigma`): the noise level as a "
        "level map, sigma/50 or -1 for unknown (docs/architecture.md, \"A level map for "
        "denoising\"); half the training patches said unknown. Held-out validation scored "
        "both (its mean is their mean); told and blind differ by 0.00-0.01 dB here: Gaussian "
        "noise states its own level.\n"
        "- **Three runs.** 100000 steps from scratch with plain MSE (2.39 CPU-hours), then "
        "10000 with relative-mse floored at (10/255)^2, which weighs the low sigmas more (the "
        "previous file: Set12 32.49 / 30.15 / 26.99, BSD68 31.49 / 29.05 / 26.13, Urban100 "
        "31.82 / 29.32 / 25.90); then this run, from that file grown by the level map (its "
        "input at zero) and 3 more ResBlocks a side (the identity at first), so that it began "
        "from what the previous file computes: 50000 steps of "
        "`train/recipes/magn-s-local-denoise-gray.toml` (relative-mse, peak lr 3e-4, cosine), "
        "1.62 CPU-hours of its own; held-out 28.56 dB at its first validation, 28.69 at its "
        "best (step 47000, published; 28.68 at its last).\n"
        "- **The recipe file.** The run was started as `magn train --config "
        "train/denoise-gray-level.toml` at e65c4c9 with the level-map code not yet committed; "
        "both were committed minutes later (76b0183), the recipe as "
        "`train/recipes/magn-s-local-denoise-gray.toml` (the same settings; threads since set to "
        "auto). Replay: `magn train --config train/recipes/magn-s-local-denoise-gray.toml --out RUN`.\n"
        "- **Against #33's bars** (DnCNN-B, `../shared/peers/dncnn_gray_blind.pth`, scored in "
        "the same table on the same inputs): not met. This file is 0.04 to 0.10 dB below "
        "DnCNN-B at every point of Set12 and BSD68, told and blind alike (Set12 32.62 / 30.26 / "
        "27.09 against 32.68 / 30.36 / 27.18; BSD68 31.58 / 29.12 / 26.19 against 31.63 / 29.17 / "
        "26.23), in a third of its restore time (README, \"Performance\"); the previous file was "
        "0.10 to 0.21 dB below. It gained 0.09 to 0.13 dB on the previous file at every point.\n"
        "- BM3D was run on Set12 and BSD68 only (about 40 s/MP at one thread: Urban100 would "
        "take hours); DnCNN-B on Set12 and BSD68. Urban100 is not scored for this file yet (about an hour "
        "of the CPU for it and DnCNN-B at three sigmas; the next sitting): the previous file's "
        "Urban100 rows are left out of this table rather than shown beside this file."),
    "magn-s-local-denoise-color": (
        "- **Started from the gray denoiser.** The run began from `magn-s-local-denoise-gray` "
        "(step 100000) with its head and tail converted to three channels (exact on gray images; "
        "docs/architecture.md, \"One network, gray or color\"), then 30000 steps on CBSD432 with "
        "chroma scaling up to 3x (`train/warm-start.toml`, `grad_clip_median = 4`; a 600-step probe "
        "reached held-out 29.90 dB this way and 27.31 from scratch): CBSD68 33.54 / 30.96 / 27.71, "
        "Kodak24 34.25 / 31.86 / 28.71, McMaster 33.41 / 31.42 / 28.50. Then 10000 steps that "
        "weigh the low sigmas more (`train/denoise-low-sigma.toml`): CBSD68 33.66 / 30.96 / 27.61, "
        "Kodak24 34.39 / 31.86 / 28.58, McMaster 33.69 / 31.51 / 28.39. Then a continuation of "
        "that recipe from those weights, planned for 40000 steps at a peak lr of 3e-4 "
        "(`train/warm-start.toml`); held-out validation gained about 0.05 dB per CPU-hour, and "
        "its best, at step 29000, was 0.05 to 0.08 dB above the previous file at every point. Then "
        "6000 steps from those weights that show clean and nearly clean patches more often "
        "(`train/denoise-near-clean.toml`: 35% of the patches at sigma 0-6), so that a clean "
        "photo comes out as it went in; this export is the end of that run (held-out "
        "validation 31.11 -> 31.06 dB). The CPU-hours include the gray model's 2.39; every color "
        "run that made the weights is on the validation curve (the gray run's is on its card).\n"
        "- **Against #15's bars** (published CBM3D + 0.1 dB on CBSD68 and Kodak24, McMaster at "
        "most 0.3 below): met at all 9 points, Kodak24 at sigma 50 by 0.01 (28.57 against "
        "28.56). The clean-photo fine-tune cost 0.02 to 0.08 dB (CBSD68 was 33.73 / 31.02 / "
        "27.67, Kodak24 34.46 / 31.92 / 28.65, McMaster 33.77 / 31.57 / 28.47). The bm3d "
        "package's CBM3D, run here, is stronger than the published figures on Kodak24 (34.47 "
        "/ 31.90 / 28.68: the model is above it in SSIM only), McMaster (34.06 / 31.70 / 28.53; "
        "in SSIM the model is above at sigma 25 and 50) and, by about 1 dB, the Urban100 subset "
        "(34.44 / 32.05 / 28.68), whose repeated structures suit its block matching; on CBSD68 "
        "(33.59 / 30.83 / 27.50) the model is above it in PSNR and SSIM at every sigma.\n"
        "- **Clean photos.** The 128 x 128 crops the tests restore (Kodak24 kodim05, McMaster 1 "
        "and 7) come out within 40 dB of themselves when clean: 51.2, 40.05 and 44.9 dB (the "
        "saturated McMaster 1 was 38.5 with the previous file), "
        "and at sigma 5 each gains on its noisy input (39.4, 34.4 and 39.5 dB against 34.18)."),
    "magn-s-local-dejpeg-color": (
        "- **One model for every quality, told the quality.** Trained on q5-100 (half the patches "
        "at q10-40) with the quality as a level map (`train/level-map.toml`; docs/architecture.md) "
        "and the relative-mse loss (every quality counts alike in dB). `magn restore` reads the "
        "quality from the file's tables; a file that does not state it is restored blind.\n"
        "- **QK-norm graph attention** (`train/qk-norm.toml`): the patch graph's attention logits "
        "are cosines with a learned temperature. The previous color model, with plain dot "
        "products, broke down late in its run (one patch's features grew and took every query's "
        "attention; train/README.md, \"Breakdowns\"); with QK-norm the run went on smoothly, "
        "trained from scratch for a cosine schedule of 48000 steps, stopped at step 42000 (lr at "
        "5% of its peak; held-out 32.70 dB, the previous file 32.52) and published. This file "
        "continues it: 10000 steps at a peak lr of 1e-4 from those weights, resumed to 15000 "
        "(held-out 32.72; 0.60 CPU-hours of its own), the export of the last step.\n"
        "- **It does not make good JPEGs worse**: every image of Kodak24 and LIVE1 gains over its "
        "JPEG at every quality from 50 to 95 (the smallest gains, at q95: kodim13 +0.41 dB, LIVE1 "
        "studentsculpture and building2 +0.34); Kodak24 at q90 38.03 -> 39.06 dB and q95 40.56 -> "
        "41.33 (the q10-40 model of the first release took four Kodak24 photos at q90 from 37.39 "
        "to 34.65). Tested on crops at q50/75/90/95, 4:4:4, and a photo saved at q90 then q60.\n"
        "- **Against #16's bar** (LIVE1 RGB half way from the first color model to FBCNN: 27.04 / "
        "29.46 / 30.77 / 31.64 at q10-40, as the tables round them): 27.06 / 29.46 / 30.77 / 31.68, "
        "met at every point, by a hair at q20 (29.458; half way is 29.455) and q30 (30.772; "
        "30.765). The step-42000 file scored 27.04 / 29.44 / 30.76 / 31.66, 0.02 and 0.01 dB "
        "short at q20 and q30; the first QK-norm-free file 26.87 / 29.30 / 30.61 / 31.52. Kodak24 "
        "28.13 / 30.62 / 31.97 / 32.89 (the step-42000 file 28.10 / 30.60 / 31.95 / 32.87)."),
    "magn-s-local-dejpeg-gray": (
        "- **Started from the color JPEG model.** The run began from the published "
        "`magn-s-local-dejpeg-color` (QK-norm graph attention, its step 42000) with its head and "
        "tail converted to one channel, which is exact on gray images (docs/architecture.md, "
        "\"One network, gray or color\"), and trained 30000 steps on Train400 "
        "(`train/warm-start.toml`: peak lr 3e-4). This export is its best held-out validation, "
        "the last (33.07 dB; the file it replaces, started from the previous color model "
        "without QK-norm, 32.91). The CPU-hours include the color model's 1.60.\n"
        "- **Every quality, told the quality**, as the color model: q5-100 with the level map and "
        "relative-mse. At q50-95 every image of Classic5 and LIVE1 gains over its JPEG (the "
        "smallest gain: +0.21 dB, Classic5 peppers at q95); the q10-40 model of the first "
        "release made a q75 crop of barbara 0.9 dB worse.\n"
        "- **Against #16's bars** (published ARCNN + 0.1 dB; Classic5 q10 at least 29.13): met at "
        "all 8 points. Classic5 29.30 / 31.57 / 32.86 / 33.74 and LIVE1 (Y) 29.14 / 31.55 / 32.95 "
        "/ 33.93 at q10-40, where the file it replaces scored 29.15 / 31.43 / 32.73 / 33.62 and "
        "29.00 / 31.41 / 32.80 / 33.78."),
}

PAPER = {  # the paper's MAGN numbers (docs/architecture.md), for reference
    ("denoise", 1): "Set12 33.28 / 30.95 / 27.82, BSD68 31.94 / 29.52 / 26.58, "
                    "Urban100 33.81 / 31.40 / 27.99 (sigma 15 / 25 / 50, one model per sigma)",
    ("dejpeg", 1): "Classic5 30.10 / 32.37 / 33.62 / 34.48, LIVE1 29.86 / 32.27 / 33.68 / 34.67 "
                   "(q 10 / 20 / 30 / 40)",
    ("demosaic", 3): "McMaster 40.03, Kodak24 43.29, Urban100 40.30",
}


def _data(data) -> str:
    """The training data as the provenance records it: set, image count, content hash."""
    if isinstance(data, dict):
        return f"{data['set']} ({data['images']} images, content sha256 `{data['sha256'][:12]}...`)"
    return str(data)


def _variant(entry) -> str:
    """The registered name whose config this entry's architecture has (or is nearest to,
    with what differs: a deepened file), with its size. The input planes (channels, a
    level map) and QK-norm are the checkpoint's, not the variant's."""
    spec = get_arch(entry.arch)
    config = resolve_config(entry.arch, **entry.config)[1]
    own = {key: config[key] for key in FILE_KEYS if key in config}

    def differences(name):
        registered = resolve_config(name, **own)[1]
        return {k: v for k, v in config.items() if registered.get(k) != v}
    name = min([entry.arch] + sorted(spec.variants), key=lambda n: len(differences(n)))
    params = sum(p.numel() for p in build_model(entry.arch, **entry.config).parameters())
    extras = [what for key, what in (("level_input", "a level map"), ("qk_norm", "QK-norm")) if config.get(key)]
    extras += [f"{key} = {value}" for key, value in differences(name).items()]
    return f"`{name}`{' with ' + ' and '.join(extras) if extras else ''} ({params:,} parameters)"


def _sessions(prov: dict) -> str:
    parts = []
    for s in prov.get("sessions") or []:
        warm = s.get("warm_start")
        what = (f"warm start from {warm['weights']}" + (f" (converted, {warm['converted']})" if warm.get("converted") else "")
                if warm else s["event"])
        if warm and warm.get("commands"):  # how the weights it started from were made
            what += f" (its step {warm.get('step')}, made by `{warm['commands']}`)"
        parts.append(f"{what} at step {s['step']} ({s.get('precision')}, {s.get('threads')} thread(s))")
    return "; ".join(parts)


def _earlier_runs(prov: dict) -> str:
    """The runs before the one this checkpoint's warm start came from, oldest first. Each
    warm start's record names the run it loaded (commands, step, any conversion) and nests
    that run's own warm start as "from"; empty where the chain ends at once."""
    warm = first_warm_start(prov)
    chain = []
    while warm and warm.get("from"):
        warm = warm["from"]
        chain.append(warm)
    parts = []
    for record in reversed(chain):
        made = f"`{record['commands']}`" if record.get("commands") else f"{record['weights']} (no command recorded)"
        converted = f" (converted, {record['converted']})" if record.get("converted") else ""
        parts.append(f"{made} to its step {record.get('step')}{converted}")
    return "; then ".join(parts)


def _curve_lines(entry) -> list:
    """The validation curve (a PNG and a few points) where publish_run.py wrote one."""
    path = REPO / "weights" / "results" / f"{entry.name}-validation.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    points = data["points"]
    shown = points if len(points) <= 6 else [points[int(i * (len(points) - 1) / 5)] for i in range(6)]
    lines = [f"- Validation ({data.get('validation')}, mean PSNR of the levels) against training "
             f"CPU-hours: " + ", ".join(f"{p['cpu_hours']:.2f} h {p['val_psnr']:.2f}" for p in shown)
             + f" ([curve](results/{entry.name}-validation.png))."]
    return lines


def card(entry) -> str:
    prov = entry.provenance
    results = REPO / "weights" / "results" / f"{entry.name}.json"
    rows = json.loads(results.read_text())
    tables = (REPO / "weights" / "results" / f"{entry.name}.md").read_text().strip()
    tables = tables.replace("### ", "**", 1).replace("\n", "**\n", 1) if tables.startswith("### ") else tables
    commands = list(dict.fromkeys(r["command"] for r in rows))
    kind = "gray" if entry.channels == 1 else "color"
    levels = entry.describe_levels() or "any Bayer pattern (GRBG model, others shifted into phase)"
    lines = [
        f"### {entry.name}",
        "",
        f"{entry.task}, {kind} images, {levels}; default for {entry.task} on {kind} images.",
        "",
        f"- File: `{entry.file}`, {entry.size:,} bytes, sha256 `{entry.sha256}`.",
        f"- Trained by: `{prov.get('command')}`",
        f"- Data: {_data(prov.get('training_data'))}; {prov.get('steps')} steps of batch "
        f"{prov.get('batch_size')} at patch {prov.get('patch_size')}; {prov.get('notes')}.",
        f"- Architecture: {_variant(entry)}.",
        f"- Hardware: {prov.get('hardware')}; wall time {prov.get('wall_time')}"
        + (f"; {prov['cpu_hours']:.2f} CPU-hours of training" if prov.get("cpu_hours") is not None else "")
        + f"; commit {prov.get('commit')}.",
    ]
    if prov.get("sessions"):
        lines.append(f"- Sessions: {_sessions(prov)}.")
        earlier = _earlier_runs(prov)
        if earlier:
            lines.append(f"- Runs before the one it started from, oldest first: {earlier}.")
    if prov.get("planned_steps") and prov["planned_steps"] != prov.get("steps"):
        lines.append(f"- Exported at step {prov['steps']} of a run planned for {prov['planned_steps']} "
                     "(a later export of the run may replace this file).")
    lines += _curve_lines(entry)
    if (entry.task, entry.channels) in PAPER:
        lines.append(f"- The paper's MAGN, for reference (not measured here): {PAPER[(entry.task, entry.channels)]}.")
    if entry.name in NOTES:
        lines += NOTES[entry.name].split("\n")
    lines += ["", "Measured with:", ""]
    lines += [f"    {c}" for c in commands]
    lines += ["", tables, ""]
    return "\n".join(lines)


_COUNT_WORDS = ["No", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten"]


def _check_intro(manifest) -> None:
    """INTRO says: one checkpoint per task and channel count, each the default. Refuse to
    publish that text when it is no longer true."""
    problems = []
    kinds = [(e.task, e.channels) for e in manifest.entries]
    if len(set(kinds)) != len(kinds):
        problems.append("two checkpoints serve one task and channel count")
    problems += [f"{e.name} is not the default" for e in manifest.entries if not e.default]
    if problems:
        raise SystemExit(f"{README}: INTRO in {__file__} no longer describes the manifest "
                         f"({'; '.join(problems)}); rewrite it")


def render(text: str, manifest) -> str:
    """The README `text` with its model cards section regenerated from `manifest`."""
    _check_intro(manifest)
    head = text[:text.index(HEADING)] if HEADING in text else text.rstrip() + "\n\n"
    n = len(manifest.entries)
    count = _COUNT_WORDS[n] if n < len(_COUNT_WORDS) else str(n)
    intro = INTRO.format(count=count)
    body = "\n".join(card(e) for e in manifest.entries)
    return f"{head}{HEADING}\n\n{intro}\n{body}"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    manifest = load_manifest(REPO / "weights" / "manifest.json")
    text = README.read_text()
    new = render(text, manifest)
    if "--check" in argv:
        if new != text:
            print(f"{README} is out of date: run python scripts/model_cards.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
