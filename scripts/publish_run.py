"""Publish a training run's current weights as a default checkpoint, while the run goes on.

    python scripts/publish_run.py ~/magn-runs/denoise-gray --name magn-s-denoise-gray \
        --replaces magn-tiny-local-denoise-gray

1. exports the run's last checkpoint, or with --best its best held-out validation so
   far (fp16 EMA weights, provenance with every command, resume and warm start,
   CPU-hours, data by name and content hash);
2. adds it to weights/manifest.json as the default for its task and channels, replacing
   the named entries (and deleting their files), or a previous export of its own name;
3. writes the validation curve beside the model card: weights/results/NAME-validation.json
   (step, CPU-hours, PSNR per level, run) and NAME-validation.png (PSNR against CPU-hours).
   A run that continues the published NAME (warm-started from it) keeps the earlier runs'
   points, so the curve shows every run that made the weights.

Then score it (the eval command is printed) and regenerate the cards:

    magn eval ... -m NAME -o weights/results/NAME.json -o weights/results/NAME.md
    magn weights scores NAME weights/results/NAME.json
    python scripts/model_cards.py
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magncli.training.curves import draw_validation_series, write_png  # noqa: E402
from magncli.training.loop import Trainer  # noqa: E402
from magncli.training.runstate import LOG_FILE, first_warm_start, load_run_config, read_log  # noqa: E402
from magncli.weights import add_checkpoint  # noqa: E402

EVAL = {  # task, channels -> the sets and baselines of its published tables
    # bm3d (the optional extra) takes about 40 s/MP: add `-m bm3d` for the final tables.
    ("denoise", 1): "--task denoise --channels gray -m input -m opencv-nlm --blind",
    ("denoise", 3): "--task denoise --channels color -m input -m opencv-nlm --blind",
    ("dejpeg", 1): "--task dejpeg --channels gray --levels 10,20,30,40,50,60,70,80,90,95 -m input",
    ("dejpeg", 3): "--task dejpeg --channels color --levels 10,20,30,40,50,60,70,80,90,95 -m input",
    ("demosaic", 3): "--task demosaic --channels color -m input -m opencv-bilinear -m opencv-ea -m opencv-vng",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--replaces", action="append", default=[])
    ap.add_argument("--best", action="store_true",
                    help="publish the best held-out validation so far (model_best), not the last checkpoint")
    args = ap.parse_args()

    config = load_run_config(args.run)
    trainer = Trainer(config, args.run, resume=True, record_session=False)
    export = trainer.export(best=args.best)
    named = args.run / f"{args.name}.safetensors"
    shutil.copyfile(export, named)
    replaces = list(args.replaces)
    from magncli.weights import load_manifest
    previous_entry = load_manifest().find(args.name)
    if previous_entry and args.name not in replaces:
        replaces.append(args.name)
    entry = add_checkpoint(named, name=args.name, default=True, replaces=replaces)

    results = REPO / "weights" / "results"
    results.mkdir(parents=True, exist_ok=True)
    curve = _run_points(read_log(args.run / LOG_FILE), args.run.name)
    curve_file = results / f"{args.name}-validation.json"
    if previous_entry:
        replaced_start = first_warm_start(previous_entry.provenance) or {}
        curve = _earlier_points(curve_file, first_warm_start(entry.provenance),
                                {previous_entry.sha256, replaced_start.get("sha256")} - {None},
                                entry.provenance.get("validation"), args.run.parent) + curve
    curve_file.write_text(json.dumps(
        {"validation": entry.provenance.get("validation"), "points": curve}, indent=1, ensure_ascii=False) + "\n")
    by_run = {}
    for point in curve:
        by_run.setdefault(point.get("run", "earlier run"), []).append((point["cpu_hours"], point["val_psnr"]))
    write_png(results / f"{args.name}-validation.png",
              draw_validation_series(list(by_run.items()),
                                     f"{args.name}: validation PSNR (dB, held-out images) against CPU-hours"))
    print(f"published {entry.name}: step {entry.provenance['steps']} of {config.steps}, "
          f"{entry.provenance['cpu_hours']:.2f} CPU-hours, sha256 {entry.sha256[:12]}...")
    print("score it with:\n  magn eval " + EVAL[(entry.task, entry.channels)].replace("-m input", f"-m input -m {entry.name}", 1)
          + f" -o weights/results/{entry.name}.json -o weights/results/{entry.name}.md --overwrite"
          + f"\n  magn weights scores {entry.name} weights/results/{entry.name}.json\n  python scripts/model_cards.py")


def _run_points(records: list, run_name: str) -> list:
    """A run's validation points (its log.jsonl records) as the curve file holds them."""
    return [{"step": r["step"], "cpu_hours": round(r.get("cpu_s", r.get("elapsed_s", 0)) / 3600, 4),
             "val_psnr": r["val_psnr"], "levels": {k: v for k, v in r["val"].items() if k != "mean"},
             "run": run_name}
            for r in records if "val_psnr" in r]


def _earlier_points(curve_file: Path, warm: Optional[dict], replaced: set, validation,
                    runs_folder: Path) -> list:
    """The points of the runs that made the weights this run started from, on the same
    held-out images, so that the card's curve spans every run behind the weights. warm:
    the run's warm-start record (runstate.first_warm_start; None for a run from scratch),
    each nesting the one before ("from"). replaced: the sha256 of the checkpoint being
    replaced and of the weights its own run started from. A start from either (a run
    that continues the published file, or an earlier export of this same run being
    republished) takes the published curve's points up to it; a start from another run's own
    file (RUN/model_latest.safetensors, a run not published) that run's points, read from
    its folder beside this one. Points after the start were training that did not make
    the weights, and are left out. The provenance rounds CPU-hours to 3 decimals, the
    curve to 4."""
    points: list = []
    while warm:
        started = warm["cpu_s"] / 3600 + 5e-4
        if warm.get("sha256") in replaced:
            if curve_file.is_file():
                previous = json.loads(curve_file.read_text())
                if previous.get("validation") == validation:
                    points = [p for p in previous["points"] if p["cpu_hours"] <= started] + points
            break
        run_name, _, _ = str(warm.get("weights", "")).rpartition("/")
        records = read_log(runs_folder / run_name / LOG_FILE) if run_name else []
        if not any(r.get("event") == "start" and r.get("val_set") == validation for r in records):
            break
        points = [p for p in _run_points(records, run_name) if p["cpu_hours"] <= started] + points
        warm = warm.get("from")
    return points


if __name__ == "__main__":
    main()
