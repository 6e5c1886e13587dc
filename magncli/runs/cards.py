"""The "Model cards" section of weights/README.md, regenerated from the manifest, the
`magn eval` results in weights/results/ and the hand-written notes in weights/notes/NAME.md,
so that a card never quotes a table the results files do not hold, and the README never
lists a checkpoint the manifest does not (or misses one it does).

    magn weights cards            # rewrites weights/README.md from "## Model cards" on
    magn weights cards --check    # exit 1 if the README is not what it would write

The text above "## Model cards" is hand-written and must not say which checkpoints exist.
A note (weights/notes/NAME.md) says what the table cannot: the lineage in words, the bars
it was made for, what was tried. Its numbers are history, quoted from the runs and tables
of their time.
"""
from __future__ import annotations

import json
from pathlib import Path

from magncli.errors import MagnError
from magncli.fileio import write_file_atomic
from magncli.models.registry import FILE_KEYS, build_model, get_arch, resolve_config
from magncli.runs.folder import first_warm_start

HEADING = "## Model cards"
README_FILE = "README.md"
NOTES_FOLDER = "notes"

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
- How each was made: its lineage recipe, `train/recipes/NAME.toml` (`magn train --recipe
  NAME` replays it), and docs/lab-notebook.md (the variant study, the long runs, probes).
"""

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


def _curve_lines(entry, weights_dir: Path) -> list:
    """The validation curve (a PNG and a few points) where publishing wrote one."""
    path = weights_dir / "results" / f"{entry.name}-validation.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    points = data["points"]
    shown = points if len(points) <= 6 else [points[int(i * (len(points) - 1) / 5)] for i in range(6)]
    lines = [f"- Validation ({data.get('validation')}, mean PSNR of the levels) against training "
             f"CPU-hours: " + ", ".join(f"{p['cpu_hours']:.2f} h {p['val_psnr']:.2f}" for p in shown)
             + f" ([curve](results/{entry.name}-validation.png))."]
    return lines


def card(entry, weights_dir: Path) -> str:
    """One checkpoint's card: its facts, provenance, curve, notes and results tables."""
    prov = entry.provenance
    results = weights_dir / "results" / f"{entry.name}.json"
    rows = json.loads(results.read_text())
    tables = (weights_dir / "results" / f"{entry.name}.md").read_text().strip()
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
    lines += _curve_lines(entry, weights_dir)
    if (entry.task, entry.channels) in PAPER:
        lines.append(f"- The paper's MAGN, for reference (not measured here): {PAPER[(entry.task, entry.channels)]}.")
    notes = weights_dir / NOTES_FOLDER / f"{entry.name}.md"
    if notes.is_file():
        lines += notes.read_text(encoding="utf-8").rstrip().split("\n")
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
        raise MagnError(f"INTRO in magncli/runs/cards.py no longer describes the manifest "
                        f"({'; '.join(problems)}); rewrite it")


def render(text: str, manifest, weights_dir: Path) -> str:
    """The README `text` with its model cards section regenerated from `manifest` (its
    files, results and notes in `weights_dir`)."""
    _check_intro(manifest)
    head = text[:text.index(HEADING)] if HEADING in text else text.rstrip() + "\n\n"
    n = len(manifest.entries)
    count = _COUNT_WORDS[n] if n < len(_COUNT_WORDS) else str(n)
    intro = INTRO.format(count=count)
    body = "\n".join(card(e, weights_dir) for e in manifest.entries)
    return f"{head}{HEADING}\n\n{intro}\n{body}"


def write_cards(manifest_path=None, check: bool = False) -> bool:
    """Regenerate the cards of the README beside the manifest (the checkout's by default).
    check: write nothing. Returns whether the README was already up to date."""
    from magncli.weights import load_manifest
    manifest = load_manifest(manifest_path)
    weights_dir = Path(manifest.path).parent
    readme = weights_dir / README_FILE
    text = readme.read_text(encoding="utf-8")
    new = render(text, manifest, weights_dir)
    if new != text and not check:
        write_file_atomic(readme, new, overwrite=True)
    return new == text
