"""A run's weights as a file to publish: export.safetensors, fp16 EMA weights with their
provenance, read from the run's own weights files. Nothing is trained or rebuilt (no
model, no data scan), so a run can be exported while it goes on in another process.
"""
from __future__ import annotations

from pathlib import Path

from magncli.checkpoints import read_checkpoint, read_checkpoint_meta, save_weights
from magncli.errors import MagnError
from magncli.runs.folder import BEST_FILE, EXPORT_FILE, LATEST_FILE, LOG_FILE, read_log

# What the run's weights files carry beside what an export does: the validation score of
# model_best (the provenance says it in words).
_NOT_EXPORTED = ("val_psnr", "val_set")


def best_val_psnr(run_dir: Path, step: int):
    """The best held-out validation PSNR up to `step` (the log), or None without one."""
    scores = [r["val_psnr"] for r in read_log(Path(run_dir) / LOG_FILE)
              if "val_psnr" in r and r["step"] <= step]
    return max(scores) if scores else None


def export_run(run_dir, best: bool = False) -> Path:
    """Write RUN/export.safetensors from the last checkpoint (model_latest), or with best
    from the best held-out validation so far (model_best, with the step and CPU-hours at
    which it was validated). Returns its path."""
    run_dir = Path(run_dir)
    source = run_dir / (BEST_FILE if best else LATEST_FILE)
    if not source.is_file():
        raise MagnError(f"{source} does not exist: " + ("the run has not validated yet"
                                                         if best else "the run has no checkpoint yet"))
    state, meta = read_checkpoint(source)
    if not meta.get("provenance"):
        raise MagnError(f"{source}: no provenance in its metadata (a run of an older magn); "
                        "resume it for one checkpoint to export it")
    latest = read_checkpoint_meta(run_dir / LATEST_FILE) if best else meta
    meta = {k: v for k, v in meta.items() if k not in _NOT_EXPORTED}
    step = int(meta["step"])
    if best:
        meta["provenance"] = dict(meta["provenance"], notes=meta["provenance"]["notes"]
                                  + f"; the best held-out validation, at step {step} of a run "
                                    f"then at step {latest['step']}")
    meta["best_val_psnr"] = best_val_psnr(run_dir, int(latest["step"]))
    return save_weights(run_dir / EXPORT_FILE, state, meta, half=True)
