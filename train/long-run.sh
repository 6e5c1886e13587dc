#!/usr/bin/env bash
# Start or continue one long CPU run in the background, its run folder outside the
# checkout (~/magn-runs by default), at one torch thread so that other work can share
# the machine. Safe to call again at any time: it resumes a stopped run, warm-starts
# from the published weights when the run folder is gone, and does nothing while the
# run is alive.
#   bash train/long-run.sh RECIPE ARCH [NAME] [OVERLAY...]
#     RECIPE  a task recipe of train/ (denoise-gray-blind, dejpeg-color, demosaic, ...)
#     ARCH    the variant (docs/lab-notebook.md, "The variant study"), e.g. magn-s-local
#     NAME    published weights to warm-start from when the run folder is new: the run's own
#             earlier checkpoint, or one of the same variant for another channel count
#             (converted; e.g. the color JPEG model for the gray run), if any ("": none)
#     OVERLAY more recipe files after train/cpu-s.toml (e.g. train/level-map.toml)
# Checkpoints every 1000 steps (about 3 minutes at one thread; train/cpu-s.toml), so a
# killed session loses at most that. Publish progress with magn weights publish RUN --name NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE="$1"; ARCH="$2"; NAME="${3:-}"
shift $(( $# < 3 ? $# : 3 ))
OVERLAYS=()
for overlay in "$@"; do OVERLAYS+=(--config "$overlay"); done
command -v magn >/dev/null || { echo "long-run: magn is not on PATH (. .venv/bin/activate)" >&2; exit 1; }
RUNS="${MAGN_RUNS:-$HOME/magn-runs}"
RUN="$RUNS/$RECIPE-$ARCH"
mkdir -p "$RUNS"
if pgrep -f -- "--out $RUN( |$)" >/dev/null; then
    echo "long-run: $RUN is already training"; exit 0
fi
if [ -f "$RUN/state_latest.pt" ]; then
    set -- train --resume --out "$RUN" --compile -q
elif [ -n "$NAME" ] && magn weights path "$NAME" >/dev/null 2>&1; then
    set -- train --config "train/$RECIPE.toml" --config train/cpu-s.toml "${OVERLAYS[@]}" --arch "$ARCH" \
        --init-from "$NAME" --out "$RUN" -q
else
    set -- train --config "train/$RECIPE.toml" --config train/cpu-s.toml "${OVERLAYS[@]}" --arch "$ARCH" \
        --out "$RUN" -q
fi
nohup magn "$@" >>"$RUN.out" 2>&1 &
echo "long-run: magn $* (pid $!, log $RUN.out)"
