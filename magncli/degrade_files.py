"""Benchmark inputs as files: what `magn degrade` does.

    manifest = degrade_files(["clean/"], "noisy/", make_degradation("denoise", 25))

Clean images are degraded by the protocol (magncli.tasks) and written, with a
manifest.json that records every parameter, so that `magn eval --inputs` or another
tool can use exactly these inputs.
"""
from __future__ import annotations

import json
from pathlib import Path

from magncli.datasets import list_images, load_image
from magncli.errors import MagnError
from magncli.fileio import check_writable, remove_stale_temporaries, write_file_atomic
from magncli.images import encode_float_image
from magncli.tasks import TASKS, Degradation
from magncli.version import __version__

# The formats written: (extension, what is stored), the note going into manifests.
OUTPUT_FORMATS = {
    "png": (".png", "8-bit PNG: values clipped to [0, 1] and rounded (noise loses its tails)"),
    "png16": (".png", "16-bit PNG: values clipped to [0, 1], stored as round(value * 65535)"),
    "tiff": (".tiff", "float32 TIFF: values stored exactly, unclipped"),
    "jpg": (".jpg", "the JPEG file itself (dejpeg), which decodes to the protocol's input"),
}


def degrade_files(inputs, out_dir, degradation: Degradation, fmt: str = "png",
                  overwrite: bool = False) -> dict:
    """Degrade image files (folders are expanded to their images) into out_dir as
    <stem>.png/.tiff, plus manifest.json recording every parameter; returns the manifest.

    As the protocol says, every image gets a fresh generator seeded with the same seed, so
    a file's noise does not depend on which other files were given.

    Settings and outputs are checked before any work: nothing is written if an input
    is missing or any output exists already (unless overwrite). Then every image is
    attempted: one that fails (unreadable, too large, several frames, cannot be
    written) is listed under "failed" with its one-line error, and the others are
    written. manifest.json lists exactly the files written ("files"), and is written
    whenever at least one was."""
    if fmt not in OUTPUT_FORMATS:
        raise MagnError(f"unknown output format {fmt!r}; formats: {', '.join(OUTPUT_FORMATS)}")
    jpeg_file = degradation.task.jpeg_file
    if fmt == "jpg" and jpeg_file is None:
        makers = [t.name for t in TASKS.values() if t.jpeg_file is not None]
        raise MagnError(f"fmt=jpg writes the JPEG file itself, for the task{'s' if len(makers) > 1 else ''} "
                        f"{', '.join(makers)} only")
    sources = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            sources += list_images(item)
        elif item.is_file():
            sources.append(item)
        elif item.exists():   # a FIFO, socket or device: reading one could block forever
            raise MagnError(f"{item}: not a regular file or folder")
        else:
            raise MagnError(f"{item} does not exist")
    out_dir = Path(out_dir)
    targets = [out_dir / (src.stem + OUTPUT_FORMATS[fmt][0]) for src in sources]
    if len(set(targets)) != len(targets):
        clash = next(t for t in targets if targets.count(t) > 1)
        raise MagnError(f"two inputs would both be written to {clash}")
    # Trees apart: `degrade DIR -o DIR --overwrite` replaced the clean originals.
    originals = {src.resolve() for src in sources}
    for src, target in zip(sources, targets):
        if target.resolve() in originals:
            raise MagnError(f"{target} is an input: the degraded file would replace a clean original; "
                            "choose another out_dir= or fmt=")
    manifest_path = out_dir / "manifest.json"
    for target in targets + [manifest_path]:
        check_writable(target, overwrite)
    remove_stale_temporaries(targets + [manifest_path])

    records, failed = [], []
    for src, target in zip(sources, targets):
        try:
            clean = load_image(src)  # float32 HxWxC
            if fmt == "jpg":  # the JPEG file itself: restore reads its quality from the tables
                data = jpeg_file(clean, degradation)
            else:
                data = encode_float_image(degradation.apply(clean), fmt)
            write_file_atomic(target, data, overwrite)
        except (MagnError, OSError, MemoryError) as e:
            message = str(e) if isinstance(e, MagnError) else (
                "out of memory" if isinstance(e, MemoryError) else (e.strerror or str(e)))
            if not message.startswith(str(src)) and not message.startswith(str(target)):
                message = f"{src}: {message}"
            failed.append({"input": str(src), "error": message})
            continue
        records.append({"input": str(src), "output": target.name, "seed": degradation.seed,
                        "height": clean.shape[0], "width": clean.shape[1],
                        "channels": clean.shape[2]})
    manifest = {"magn_version": __version__, "degradation": degradation.as_dict(),
                "format": fmt, "format_note": OUTPUT_FORMATS[fmt][1], "files": records}
    if failed:
        manifest["failed"] = failed
    if records:
        write_file_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n", overwrite)
    return manifest
