"""Presenting `magn eval` results: terminal tables, .json / .csv / .md files and a sheet of
labelled crops.

Rows are what evaluate.run_eval returns, one dict per model x set x level:

    for table in results_tables(rows): console.print(table)
    write_results(rows, "results.md")              # .json (everything), .csv or .md
    write_sheet("sheet.png", [(title, [(label, image, psnr), ...]), ...])
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from magncli.errors import MagnError
from magncli.fileio import check_writable, write_file_atomic
from magncli.images import center_crop, encode_float_image, to_uint8

SHEET_CELL = 192  # pixels of each crop on a comparison sheet

# --------------------------------------------------------------------------- tables

CSV_COLUMNS = ("task", "channels", "model", "set", "level", "psnr", "ssim", "psnr_y", "ssim_y",
               "n_images", "seconds_per_image", "peak_mem_mb", "sigma", "quality", "pattern",
               "seed", "tile", "overlap", "tiling", "ensemble", "precision", "quantize", "inputs",
               "commit")


def _cell(row: dict) -> str:
    text = f"{row['psnr']:.2f} / {row['ssim']:.4f}"
    if "psnr_y" in row:
        text += f"\nY {row['psnr_y']:.2f} / {row['ssim_y']:.4f}"
    return text


def results_grid(rows: List[dict]) -> List[Tuple[str, List[str], List[List[str]]]]:
    """Rows -> one table per task and channel mode: (title, header, body). Each table row is
    a model; columns are set x level "PSNR / SSIM", then mean s/img and peak memory."""
    tables = []
    for task, mode in dict.fromkeys((r["task"], r["channels"]) for r in rows):
        subset = [r for r in rows if r["task"] == task and r["channels"] == mode]
        columns = list(dict.fromkeys((r["set"], r["level"]) for r in subset))
        header = ["model"] + [f"{s} {lv}" for s, lv in columns] + ["s/img", "peak MB"]
        body = []
        for model in dict.fromkeys(r["model"] for r in subset):
            mine = [r for r in subset if r["model"] == model]
            by_column = {(r["set"], r["level"]): r for r in mine}
            cells = [_cell(by_column[c]) if c in by_column else "" for c in columns]
            seconds = np.mean([r["seconds_per_image"] for r in mine])
            peaks = [r["peak_mem_mb"] for r in mine if r["peak_mem_mb"] is not None]
            body.append([model] + cells + [f"{seconds:.3f}", f"{max(peaks):.0f}" if peaks else "-"])
        notes = "; ".join(dict.fromkeys(f"{r['set']}: {r['note']}" for r in subset if r["note"]))
        title = f"{task} ({mode}), PSNR dB / SSIM" + (f" [{notes}]" if notes else "")
        tables.append((title, header, body))
    return tables


def results_tables(rows: List[dict]):
    """Rich tables for the terminal, one per task and channel mode."""
    from rich.markup import escape  # names and notes are text, not markup
    from rich.table import Table

    tables = []
    for title, header, body in results_grid(rows):
        table = Table(title=escape(title))
        for i, name in enumerate(header):
            table.add_column(escape(name), justify="left" if i == 0 else "right")
        for line in body:
            table.add_row(*map(escape, line))
        tables.append(table)
    return tables


def _markdown(rows: List[dict]) -> str:
    parts = []
    for title, header, body in results_grid(rows):
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("\n", "<br>") for c in line) + " |" for line in body]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _csv(rows: List[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **row["degradation"]})
    return out.getvalue()


# --------------------------------------------------------------------------- files

RESULT_FORMATS = {".json": lambda rows: json.dumps(rows, indent=2) + "\n",
                  ".csv": _csv, ".md": _markdown}


def check_results_path(path, overwrite: bool = False) -> Path:
    """MagnError for an unknown extension or an existing file: checked before the run."""
    path = Path(path)
    if path.suffix.lower() not in RESULT_FORMATS:
        raise MagnError(f"results file {path} must end in {', '.join(RESULT_FORMATS)}")
    return check_writable(path, overwrite)


def write_results(rows: List[dict], path, overwrite: bool = False) -> Path:
    """Write rows as .json (everything, per-image scores included), .csv (one line per row)
    or .md (the tables), chosen by the extension."""
    path = check_results_path(path, overwrite)
    return write_file_atomic(path, RESULT_FORMATS[path.suffix.lower()](rows), overwrite)


def merge_rows(*row_lists: Sequence[dict]) -> List[dict]:
    """Results rows merged by (model, set, channels, level), a later list's row replacing
    an earlier one's: the newest evaluation of a model wins, and rows evaluated once (the
    baselines, the peers) are kept. Each row keeps its own `command`."""
    merged: dict = {}
    for rows in row_lists:
        for row in rows:
            merged[(row["model"], row["set"], row.get("channels"), row["level"])] = row
    return list(merged.values())


# --------------------------------------------------------------------------- sheet

def _sheet_cell(img: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """A labelled SHEET_CELL-wide BGR uint8 tile: the centre crop, then text lines below."""
    crop = to_uint8(center_crop(img, SHEET_CELL))  # hxwxC, C = 1 or 3
    crop = np.repeat(crop, 3, axis=2) if crop.shape[2] == 1 else crop[..., ::-1]
    line_height = 18
    cell = np.full((SHEET_CELL + line_height * len(lines) + 6, SHEET_CELL, 3), 255, np.uint8)
    cell[:crop.shape[0], :crop.shape[1]] = crop
    for i, text in enumerate(lines):
        cv2.putText(cell, text, (4, SHEET_CELL + line_height * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return cell


def write_sheet(path, sheet_rows, overwrite: bool = False) -> Path:
    """A PNG of centre crops, one strip per set x level, each crop labelled with its PSNR.
    sheet_rows: (title, [(label, float32 HxWxC image, PSNR or None)])."""
    strips = []
    for title, cells in sheet_rows:
        tiles = [_sheet_cell(image, [label[:24], "" if score is None else f"{score:.2f} dB"])
                 for label, image, score in cells]
        gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
        strip = np.hstack([part for tile in tiles for part in (tile, gap)])
        banner = np.full((24, strip.shape[1], 3), 255, np.uint8)
        cv2.putText(banner, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
        strips.append(np.vstack([banner, strip]))
    width = max(s.shape[1] for s in strips)
    sheet = np.vstack([np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                       for s in strips])  # BGR uint8
    rgb = sheet[..., ::-1].astype(np.float32) / 255.0  # encode_float_image takes RGB floats
    return write_file_atomic(path, encode_float_image(rgb), overwrite)
