"""Merge `magn eval` results files into one, as a model card's results file.

    python scripts/merge_results.py weights/results/NAME.json \
        old.json bm3d.json new.json [-o weights/results/NAME.md]

Rows are keyed by (model, set, channels, level); a later file's row replaces an earlier
one's, so the newest evaluation of a model wins and the baselines evaluated once (input,
NLM, BM3D: the same protocol and seed) are kept. Each row keeps its own `command`, which
the model card lists. Every output (the first path and each -o) is written whole, then
renamed into place.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from magncli.results import write_results  # noqa: E402


def merge(paths):
    merged = {}
    for path in paths:
        for row in json.loads(Path(path).read_text()):
            merged[(row["model"], row["set"], row.get("channels"), row["level"])] = row
    return list(merged.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the merged .json")
    ap.add_argument("inputs", type=Path, nargs="+", help="results files, earliest first")
    ap.add_argument("-o", "--also", type=Path, action="append", default=[], help="also as .md or .csv")
    args = ap.parse_args()
    rows = merge(args.inputs)
    for path in [args.out, *args.also]:
        write_results(rows, path, overwrite=True)
    print(f"{len(rows)} rows -> {', '.join(str(p) for p in [args.out, *args.also])}")


if __name__ == "__main__":
    main()
