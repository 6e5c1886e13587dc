"""`magn weights publish RUN --name NAME`: a training run's weights made a default
checkpoint, scored and carded, in one step (it may run while the run goes on):

1. export: the run's last checkpoint, or with best its best held-out validation so far,
   as fp16 EMA weights with provenance (runs/export.py);
2. the manifest: added as the default for its task and channel count, replacing the
   named entries (their files deleted) or an earlier export of its own name;
3. the validation curve beside the card: weights/results/NAME-validation.json and .png,
   every run behind the weights (runs/validation_curve.py);
4. the scores: `magn eval` by the task's publishing protocol (PROTOCOLS), merged into
   weights/results/NAME.json and .md, where the rows of other models (the baselines, the
   peers, BM3D run once) stay and the rows of a file this one replaces go; the manifest's
   scores from them;
5. the cards: weights/README.md regenerated (runs/cards.py).
"""
from __future__ import annotations

import json
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from magncli.checkpoints import read_checkpoint_meta
from magncli.errors import MagnError
from magncli.runs.cards import write_cards
from magncli.runs.export import export_run
from magncli.runs.folder import LOG_FILE, first_warm_start, read_log
from magncli.runs.validation_curve import earlier_points, run_points, write_validation_curve


@dataclass(frozen=True)
class Protocol:
    """What a published checkpoint's table shows: the eval settings beside its own row."""
    channels: str                      # gray | color: the track of the task's sets
    baselines: Sequence[str]           # no-weights rows (bm3d, at about 40 s/MP, by hand)
    levels: Sequence = ()              # () for the task's default levels
    blind: bool = False                # also a "NAME (blind)" row, for a level-map model


PROTOCOLS = {  # (task, channels) -> Protocol
    ("denoise", 1): Protocol("gray", ("input", "opencv-nlm"), blind=True),
    ("denoise", 3): Protocol("color", ("input", "opencv-nlm"), blind=True),
    ("dejpeg", 1): Protocol("gray", ("input",), levels=(10, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    ("dejpeg", 3): Protocol("color", ("input",), levels=(10, 20, 30, 40, 50, 60, 70, 80, 90, 95)),
    ("demosaic", 3): Protocol("color", ("input", "opencv-bilinear", "opencv-ea", "opencv-vng")),
}


@dataclass
class Published:
    """What `publish` did, for the command line to say."""
    name: str
    step: int
    planned_steps: int
    cpu_hours: float
    sha256: str
    results: Optional[Path] = None     # weights/results/NAME.json, when scored
    eval_command: str = ""             # the `magn eval` that scored it (or would)
    scored_rows: int = 0
    replaced: List[str] = field(default_factory=list)


def eval_command(name: str, task: str, channels: int, sets: Optional[Sequence[str]] = None) -> str:
    """The `magn eval` command line of the publishing protocol, as the card lists it."""
    protocol = PROTOCOLS[(task, channels)]
    words = ["magn", "eval", "--task", task, "--channels", protocol.channels]
    if sets:
        words += ["--sets", ",".join(sets)]
    if protocol.levels:
        words += ["--levels", ",".join(map(str, protocol.levels))]
    for model in (protocol.baselines[0], name, *protocol.baselines[1:]):
        words += ["-m", model]
    if protocol.blind:
        words.append("--blind")
    return shlex.join(words)


def publish(run_dir, name: str, *, best: bool = False, replaces: Sequence[str] = (),
            sets: Optional[Sequence[str]] = None, score: bool = True, data_root=None,
            manifest_path=None, progress: Optional[Callable[[str], None]] = None) -> Published:
    """Publish the run in `run_dir` as checkpoint `name` (the steps above). sets: the test
    sets to score (default: every set of the task); score=False leaves the scoring for
    later (the card then shows the other models' rows only)."""
    from magncli.evaluate import run_eval
    from magncli.inference import InferenceOptions
    from magncli.results import merge_rows
    from magncli.weights import add_checkpoint, load_manifest

    run_dir = Path(run_dir).expanduser()
    export = export_run(run_dir, best=best)
    meta = read_checkpoint_meta(export)
    key = (meta.get("task"), meta.get("config", {}).get("in_channels"))
    if key not in PROTOCOLS:
        raise MagnError(f"{export}: no publishing protocol for task {key[0]} with {key[1]} channel(s)")
    named = run_dir / f"{name}.safetensors"
    shutil.copyfile(export, named)
    manifest = load_manifest(manifest_path)
    weights_dir = Path(manifest.path).parent          # the shipped files, results and cards
    previous = manifest.find(name)
    replaced = list(dict.fromkeys([*replaces, *([name] if previous else [])]))
    entry = add_checkpoint(named, name=name, default=True, replaces=replaced, manifest_path=manifest_path)
    results_dir = weights_dir / "results"
    results_dir.mkdir(exist_ok=True)

    # The validation curve, the runs before this one included.
    curve_file = results_dir / f"{name}-validation.json"
    points = run_points(read_log(run_dir / LOG_FILE), run_dir.name)
    if previous:
        replaced_start = first_warm_start(previous.provenance) or {}
        points = earlier_points(curve_file, first_warm_start(entry.provenance),
                                {previous.sha256, replaced_start.get("sha256")} - {None},
                                entry.provenance.get("validation"), run_dir.parent) + points
    write_validation_curve(curve_file, results_dir / f"{name}-validation.png", name,
                           entry.provenance.get("validation"), points)

    # The scores: this file's rows replace those of the file it replaces, others stay.
    command = eval_command(name, entry.task, entry.channels, sets)
    results = results_dir / f"{name}.json"
    own = {name, f"{name} (blind)"}
    kept = [r for r in (json.loads(results.read_text()) if results.is_file() else []) if r["model"] not in own]
    new_rows: List[dict] = []
    if score:
        from magncli.datasets import sets_for
        protocol = PROTOCOLS[key]
        # The file just added, by its path (a name would be looked up in the default
        # manifest, which need not be `manifest_path`), its rows then named as the card says.
        shipped = str(weights_dir / entry.file)
        models = [protocol.baselines[0], shipped, *protocol.baselines[1:]]
        new_rows = run_eval(entry.task, list(sets or sets_for(entry.task, protocol.channels)),
                            list(protocol.levels), models, data_root=data_root, options=InferenceOptions(),
                            channels=protocol.channels, blind=protocol.blind, progress=progress)
        renamed = {shipped: name, f"{shipped} (blind)": f"{name} (blind)"}
        for row in new_rows:
            row["model"] = renamed.get(row["model"], row["model"])
            row["command"] = command
    _write_table(name, results, merge_rows(kept, new_rows), manifest_path)
    prov = entry.provenance
    return Published(name=name, step=int(prov["steps"]), planned_steps=int(prov.get("planned_steps") or 0),
                     cpu_hours=float(prov.get("cpu_hours") or 0.0), sha256=entry.sha256, results=results,
                     eval_command=command, scored_rows=sum(r["model"] == name for r in new_rows),
                     replaced=[n for n in replaced if n != name])


def add_results(name: str, files: Sequence, manifest_path=None) -> int:
    """Merge `magn eval` results (a peer's rows, another subsampling's) into the published
    checkpoint `name`'s weights/results/NAME.json and .md; rows of the same model, set,
    channels and level are replaced. The checkpoint's own rows, if any came, update its
    manifest scores; the cards are rewritten. Returns the number of rows merged."""
    from magncli.results import merge_rows
    from magncli.weights import load_manifest

    manifest = load_manifest(manifest_path)
    entry = manifest.get(name)
    results = Path(manifest.path).parent / "results" / f"{name}.json"
    new_rows: List[dict] = []
    for file in files:
        try:
            rows = json.loads(Path(file).read_text(encoding="utf-8"))
            if not (isinstance(rows, list) and rows
                    and all(isinstance(r, dict) and {"model", "set", "level", "task"} <= set(r) for r in rows)):
                raise ValueError("not a list of result rows")
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise MagnError(f"{file}: not `magn eval` JSON results ({e})") from None
        wrong = {r["task"] for r in rows} - {entry.task}
        if wrong:
            raise MagnError(f"{file}: rows of task {', '.join(sorted(wrong))}, but {name} is a {entry.task} model")
        new_rows += [dict(r, command=_without_outputs(r.get("command", ""))) for r in rows]
    kept = json.loads(results.read_text()) if results.is_file() else []
    _write_table(name, results, merge_rows(kept, new_rows), manifest_path,
                 record=any(r["model"] == name for r in new_rows))
    return len(new_rows)


def _write_table(name: str, results: Path, rows: List[dict], manifest_path, record: Optional[bool] = None) -> None:
    """A checkpoint's results as .json and .md, its manifest scores from them (when it has
    rows there, or as `record` says), and the cards rewritten."""
    from magncli.results import write_results
    from magncli.weights import record_scores

    for path in (results, results.with_suffix(".md")):
        write_results(rows, path, overwrite=True)
    if record if record is not None else any(r["model"] == name for r in rows):
        record_scores(name, [results], manifest_path=manifest_path)
    write_cards(manifest_path)


def _without_outputs(command: str) -> str:
    """An eval command line as a card lists it: where its files went (-o, --output) is this
    machine's business, not how the numbers were made."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    kept, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("-o", "--output"):
            skip = True
        elif not word.startswith("--output="):
            kept.append(word)
    return shlex.join(kept)
