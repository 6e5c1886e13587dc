#!/usr/bin/env bash
# How each published CPU checkpoint (weights/README.md) was made, one recipe per call:
#   1. train the recipe with the CPU overlay (magn-tiny-local), resuming if stopped;
#   2. add RUNDIR/export.safetensors (fp16 EMA weights) to weights/manifest.json;
#   3. score it by name with `magn eval` on every standard set of its task, beside the
#      input and the no-weights baselines, and record the scores in the manifest;
#   4. regenerate the model cards of weights/README.md from the manifest.
# Usage: bash train/publish-cpu.sh RECIPE
#   RECIPE: denoise-gray-blind | denoise-color-blind | dejpeg-gray | dejpeg-color | demosaic
# Steps 2-3 are skipped when the manifest already lists the checkpoint / its results exist.
# The published runs were started by hand with the same commands, OMP_NUM_THREADS=1 and
# two or three runs (and evaluations) at a time sharing the two cores. To redo one beside
# the published files, point MAGN_MANIFEST at a manifest that does not list it yet.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE="$1"
NAME="magn-tiny-local-${RECIPE%-blind}"
RUN="runs/tiny-$RECIPE"
RESULTS="weights/results/$NAME"
OVERLAYS=(--config train/cpu-tiny.toml)
EXTEND_TO=""

case "$RECIPE" in
  denoise-gray-*)  TASK=denoise;  CH=gray;  BASELINES=(-m input -m opencv-nlm) ;;
  denoise-color-*) TASK=denoise;  CH=color; BASELINES=(-m input -m opencv-nlm) ;;
  dejpeg-gray)     TASK=dejpeg;   CH=gray;  BASELINES=(-m input) ;;
  dejpeg-color)    TASK=dejpeg;   CH=color; BASELINES=(-m input) ;;
  demosaic)        TASK=demosaic; CH=color
                   BASELINES=(-m input -m opencv-bilinear -m opencv-ea -m opencv-vng)
                   # a longer run with wider chroma scaling (see the overlay's comments),
                   # then resumed to 21000 steps (a warm restart of the cosine; its card)
                   OVERLAYS+=(--config train/cpu-tiny-demosaic.toml); RUN="runs/tiny-demosaic-long"
                   EXTEND_TO=21000 ;;
  *) echo "publish-cpu: unknown recipe $RECIPE" >&2; exit 2 ;;
esac

if [ -f "$RUN/export.safetensors" ]; then
    :   # trained to the end already
elif [ -f "$RUN/config.toml" ]; then
    magn train --resume --out "$RUN" -q
else
    magn train --config "train/$RECIPE.toml" "${OVERLAYS[@]}" --out "$RUN" -q
fi
if [ -n "$EXTEND_TO" ] && ! tail -n 1 "$RUN/log.jsonl" | grep -q "\"event\": \"end\", \"step\": $EXTEND_TO,"; then
    magn train --resume --out "$RUN" --steps "$EXTEND_TO" -q
fi

if ! magn weights path "$NAME" >/dev/null 2>&1; then
    cp "$RUN/export.safetensors" "$RUN/$NAME.safetensors"
    magn weights add "$RUN/$NAME.safetensors" --name "$NAME" --default
fi

mkdir -p weights/results
if [ ! -f "$RESULTS.json" ]; then
    magn eval --task "$TASK" --channels "$CH" "${BASELINES[@]}" -m "$NAME" \
        -o "$RESULTS.json" -o "$RESULTS.md"
fi
magn weights scores "$NAME" "$RESULTS.json"
python scripts/model_cards.py
