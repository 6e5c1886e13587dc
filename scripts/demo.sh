#!/usr/bin/env bash
# The main job end to end, on a fresh CPU-only machine, in a few minutes:
#   1. train a small MAGN (magn-light) for gray denoising at sigma 25 on Train400;
#   2. make a noisy test image by the benchmark protocol (magn degrade);
#   3. restore it (magn restore) and score input, OpenCV NLM and the model (magn eval).
# No trained checkpoint is published yet (weights/README.md); this trains a short one.
# Usage: bash scripts/demo.sh [OUTDIR]     (datasets: $MAGN_DATA or ../shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${MAGN_DATA:-../shared/datasets}"
OUT="${1:-demo}"
STEPS="${DEMO_STEPS:-150}"
[ -d "$DATA/Train400" ] || { echo "demo: no datasets at $DATA (set MAGN_DATA)" >&2; exit 1; }

mkdir -p "$OUT/clean"
cp "$DATA/Set12/01.png" "$OUT/clean/"

rm -rf "$OUT/run"      # the demo's own run folder: start it afresh
magn train --config scripts/demo.toml --data "$DATA/Train400" --val "$OUT/clean" --steps "$STEPS" \
    --val-every "$STEPS" --out "$OUT/run"

magn degrade "$OUT/clean/01.png" --task denoise --sigma 25 -o "$OUT/noisy" --overwrite
magn restore "$OUT/noisy/01.png" --task denoise -w "$OUT/run/export.safetensors" -o "$OUT/restored" --overwrite
magn eval --task denoise --sets "$OUT/clean" --levels 25 \
    --model input --model opencv-nlm --model "$OUT/run/export.safetensors" \
    --output "$OUT/table.md" --overwrite
echo "demo: restored image in $OUT/restored/, scores in $OUT/table.md"
