#!/usr/bin/env bash
# The main job end to end on a fresh machine, with the checkpoints shipped in weights/:
#   1. make benchmark inputs by the protocols (magn degrade): Set12's first image with
#      Gaussian noise (sigma 25), and a Kodak24 photo saved as a quality-20 JPEG;
#   2. restore both with the default checkpoints (magn restore; the JPEG's quality is read
#      from its own quantization tables, nothing to tell it);
#   3. score them beside the input and the no-weights baselines (magn eval).
# Usage: bash scripts/demo.sh [OUTDIR]     (datasets: $MAGN_DATA or ../shared/datasets)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${MAGN_DATA:-../shared/datasets}"
OUT="${1:-demo}"
[ -d "$DATA/Set12" ] || { echo "demo: no datasets at $DATA (set MAGN_DATA)" >&2; exit 1; }

mkdir -p "$OUT/clean-gray" "$OUT/clean-color"
cp "$DATA/Set12/01.png" "$OUT/clean-gray/"
cp "$DATA/Kodak24/kodim05.png" "$OUT/clean-color/"

magn degrade "$OUT/clean-gray/01.png" --task denoise --sigma 25 -o "$OUT/noisy" --overwrite
magn restore "$OUT/noisy/01.png" --task denoise -o "$OUT/restored" --overwrite
magn degrade "$OUT/clean-color/kodim05.png" --task dejpeg --quality 20 --format jpg -o "$OUT/jpeg" --overwrite
magn restore "$OUT/jpeg/kodim05.jpg" --task dejpeg -o "$OUT/restored" --overwrite

magn eval --task denoise --sets "$OUT/clean-gray" --levels 25 \
    -m input -m opencv-nlm -m magn-tiny-local-denoise-gray -o "$OUT/denoise.md" --overwrite
magn eval --task dejpeg --sets "$OUT/clean-color" --levels 20 \
    -m input -m magn-tiny-local-dejpeg-color -o "$OUT/dejpeg.md" --overwrite
echo "demo: restored images in $OUT/restored/, scores in $OUT/denoise.md and $OUT/dejpeg.md"
