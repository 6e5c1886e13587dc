#!/usr/bin/env bash
# The main job end to end on a fresh machine, on what the repository ships (the sample
# photos in examples/ and the checkpoints in weights/); no benchmark datasets needed:
#   1. make inputs by the benchmark protocols (magn degrade): a gray photo with Gaussian
#      noise (sigma 25), a color photo saved as a quality-20 JPEG;
#   2. restore them, and a real camera JPEG, with the default checkpoints (magn restore;
#      a JPEG's quality is read from its own quantization tables);
#   3. score the first two beside the input and the no-weights baselines (magn eval).
# Usage: bash scripts/demo.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-demo}"

mkdir -p "$OUT/clean-gray" "$OUT/clean-color"
cp examples/camera.png "$OUT/clean-gray/"
cp examples/chelsea.png "$OUT/clean-color/"

magn degrade "$OUT/clean-gray/camera.png" --task denoise --sigma 25 -o "$OUT/noisy" --overwrite
magn restore "$OUT/noisy/camera.png" --task denoise -o "$OUT/restored" --overwrite
magn degrade "$OUT/clean-color/chelsea.png" --task dejpeg --quality 20 --format jpg -o "$OUT/jpeg" --overwrite
magn restore "$OUT/jpeg/chelsea.jpg" --task dejpeg -o "$OUT/restored" --overwrite
magn restore examples/rocket.jpg --task dejpeg -o "$OUT/restored" --overwrite

magn eval --task denoise --sets "$OUT/clean-gray" --levels 25 \
    -m input -m opencv-nlm -m magn-s-local-denoise-gray -o "$OUT/denoise.md" --overwrite
magn eval --task dejpeg --sets "$OUT/clean-color" --levels 20 \
    -m input -m magn-s-local-dejpeg-color -o "$OUT/dejpeg.md" --overwrite
echo "demo: restored images in $OUT/restored/, scores in $OUT/denoise.md and $OUT/dejpeg.md"
