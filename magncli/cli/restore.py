"""`magn restore`: restore image files, folders and globs."""
from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from collections import Counter, deque
from contextlib import closing
from pathlib import Path
from typing import Annotated, Deque, Dict, List, Optional, Tuple

import typer
from rich.markup import escape
from rich.progress import ProgressColumn
from rich.table import Column
from rich.text import Text

from magncli.cli import common
from magncli.cli.common import (CompileOpt, DeviceOpt, EnsembleOpt, OverlapOpt, PrecisionOpt,
                                QualityOpt, SigmaOpt, TaskOpt, Terminated, TileOpt, TilingOpt, cli_message, failure,
                                inference_options, note, out, task_level)
from magncli.engine_defaults import ENGINE
from magncli.degrade import AUTO_PATTERN, BAYER_PATTERNS
from magncli.errors import MagnError
from magncli.fileio import remove_stale_temporaries
from magncli.tasks import get_task

app = typer.Typer()


@app.command("restore")
def restore(
    inputs: Annotated[List[str], typer.Argument(metavar="INPUT...", help="Image files, folders or glob patterns.")],
    task: TaskOpt,
    sigma: SigmaOpt = None,
    quality: QualityOpt = None,
    pattern: Annotated[str, typer.Option(
        "--pattern", help=f"demosaic: Bayer pattern of the mosaics, auto | {' | '.join(BAYER_PATTERNS)}; "
                          "auto reads it off each mosaic and refuses one it cannot tell.")] = AUTO_PATTERN,
    weights: Annotated[Optional[str], typer.Option(
        "--weights", "-w", help="Checkpoint: path, URL or published name.")] = None,
    arch: Annotated[str, typer.Option(help="Architecture of --weights: auto, magn, dagl, panet.")] = "auto",
    force: Annotated[bool, typer.Option(
        "--force", help="Run a checkpoint whose metadata names another task than --task; dejpeg: also "
                        "restore the JPEGs the default models would make worse (from q86 at 4:4:4, q94 at "
                        "4:2:2, q97 gray), which are otherwise returned unchanged.")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Output folder (default: next to each input).")] = None,
    suffix: Annotated[str, typer.Option(help="Appended to each output file name.")] = "_magn",
    ext: Annotated[str, typer.Option(help="Output format: png, tif, jpg, webp, bmp.")] = "png",
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Descend into subfolders.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace existing output files.")] = False,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="Skip the images whose output exists (to finish a stopped run); they are "
                                "counted as skipped, not failed.")] = False,
    jpeg_quality: Annotated[int, typer.Option(min=1, max=100, help="Quality of JPEG outputs.")] = 95,
    n_jobs: Annotated[int, typer.Option(
        "--jobs", "-j", metavar="N", help="Restore N images at once in this process (CPU), torch's threads "
                                          "split between them. Lines and --json records stay in input order.")] = 1,
    device: DeviceOpt = ENGINE.device,
    precision: PrecisionOpt = ENGINE.precision,
    tile: TileOpt = ENGINE.tile,
    overlap: OverlapOpt = ENGINE.overlap,
    ensemble: EnsembleOpt = ENGINE.ensemble,
    tiling: TilingOpt = ENGINE.tiling,
    compile: CompileOpt = ENGINE.compile,
    offline: Annotated[bool, typer.Option(help="Never download weights (also MAGN_OFFLINE=1).")] = False,
    model_dir: Annotated[Optional[str], typer.Option(help="Weights cache folder (also MAGN_HOME).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON record per image on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
) -> None:
    """Restore images (denoise, remove JPEG artifacts or demosaic).

    Outputs are written next to the inputs as NAME_magn.png, or mirrored under -o.
    Every image is attempted: one that fails (unreadable, too large, several frames,
    output exists or cannot be written, out of memory) gets one line, and the exit code
    is 1 if any failed. With --skip-existing an existing output is skipped, not failed.

    On a terminal, progress shows the tiles of each image in work, megapixels per
    second and the time left for the image and for all of them; with --json, or when
    stderr is not a terminal, only one line per image.
    """
    from magncli.restore import Restorer, plan_jobs, restore_files

    if n_jobs < 1:
        raise MagnError(f"--jobs must be >= 1 (got {n_jobs})")
    task = get_task(task)
    level = task_level(task, sigma=sigma, quality=quality)
    jobs = plan_jobs(inputs, out_dir=str(output) if output else None, suffix=suffix, ext=ext,
                     recursive=recursive)
    restorer = Restorer(task=task, weights=weights, arch=arch, level=level, pattern=pattern,
                        options=inference_options(device, precision, tile, overlap, ensemble, tiling, compile),
                        offline=offline or None, model_dir=model_dir, quiet=quiet, force=force)
    device_type = restorer.options.resolve()[0].type
    if n_jobs > 1 and device_type != "cpu":
        raise MagnError(f"--jobs {n_jobs} restores images side by side on the CPU's cores; "
                        f"on {device_type} use --jobs 1")
    for stale in remove_stale_temporaries(job.target for job in jobs if job.target):
        note(f"removed {stale}, a temporary file left by an interrupted magn run")
    finished: Dict[int, object] = {}   # index -> Outcome: what is done (its file written, or not)
    next_index = 0                     # the next to print: lines in input order
    start = time.perf_counter()
    detailed = common.console.is_terminal and not (as_json or quiet)
    try:
        with _Display(jobs, quiet=quiet, detailed=detailed, ensemble=ensemble) as display:
            outcomes = restore_files(restorer, jobs, workers=n_jobs, overwrite=overwrite,
                                     skip_existing=skip_existing, jpeg_quality=jpeg_quality,
                                     progress=None if quiet else display.tiles)
            with closing(outcomes):
                for outcome in outcomes:
                    finished[outcome.index] = outcome
                    display.finished(outcome)
                    # Lines and records in input order, whatever order the images finish in.
                    while next_index in finished:
                        next_index += 1
                        _report(finished[next_index - 1], as_json, quiet)
    except (KeyboardInterrupt, Terminated):
        # The claims of the images in work are given up by now, their temporaries removed.
        for index in sorted(i for i in finished if i >= next_index):   # done out of turn (--jobs)
            _report(finished[index], as_json, quiet)
        if not quiet:
            counts = Counter(map(_status, finished.values()))
            note(f"stopped: {_counted(counts, len(jobs))}, {len(jobs) - len(finished)} not done, in "
                 f"{time.perf_counter() - start:.1f} s; to continue: {continue_command()}")
        raise
    counts = Counter(map(_status, finished.values()))
    if not quiet:
        note(f"{_counted(counts, len(jobs))} in {time.perf_counter() - start:.1f} s")
    if counts["failed"]:
        raise typer.Exit(1)


def _status(outcome) -> str:
    return "failed" if outcome.error is not None else "skipped" if outcome.skipped is not None else "restored"


def _counted(counts: Counter, total: int) -> str:
    """'3 of 9 image(s) restored, 5 skipped, 1 failed' (no zero counts but the first)."""
    return ", ".join([f"{counts['restored']} of {total} image(s) restored"]
                     + [f"{counts[kind]} {kind}" for kind in ("skipped", "failed") if counts[kind]])


def continue_command() -> str:
    """This command as it was typed, with --skip-existing added: it restores what a stopped
    run did not, keeping what it wrote. A run with --overwrite is repeated as it was
    (its remaining outputs may be old files that are to be replaced)."""
    args = sys.argv[1:]
    if "--skip-existing" not in args and "--overwrite" not in args:
        args = [*args, "--skip-existing"]
    return shlex.join(["magn", *args])


def _report(outcome, as_json: bool, quiet: bool) -> None:
    """Print one image's line (and --json record)."""
    job = outcome.job
    if outcome.skipped is not None:
        record = {"input": str(job.source), "output": str(job.target), "skipped": True, "reason": outcome.skipped}
    elif outcome.error is None:
        record = outcome.record
    else:
        record = {"input": str(job.source), "error": cli_message(image_error(job.source, outcome.error))}
    if as_json:
        out(json.dumps(record))
    if "error" in record:
        failure(record["error"])
    elif not quiet:
        note(f"{job.source} -> {job.target} ({'skipped: ' + outcome.skipped if outcome.skipped else _describe(record)})")


def image_error(source: Path, e: Exception) -> str:
    """One line for one input's failure, whatever it was (the batch goes on)."""
    if isinstance(e, MagnError):
        return str(e)
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "memory" in str(e).lower()):
        return f"{source}: out of memory (try a smaller --tile)"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else f"{source}: "
        return f"{where}{e.strerror or e}"
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{source}: {type(e).__name__}{': ' + first if first else ''}"


def _describe(record: dict) -> str:
    """'1.2 s, quality 20 from the JPEG tables, subsampling 4:2:0, model X': what was assumed,
    what ran, or why nothing ran (a file the model would make worse)."""
    parts = [f"{record['seconds']:.1f} s"]
    if record.get("quality") is not None:
        parts.append(f"quality {record['quality']} from the {record['quality_source']}")
    elif record.get("quality_source") == "unknown":
        parts.append("quality unknown (no JPEG tables; --quality states it)")
    if record.get("subsampling"):
        parts.append(f"subsampling {record['subsampling']}")
    if record.get("pattern"):
        parts.append(f"pattern {record['pattern']} ({record['pattern_source']})")
    if record.get("unchanged"):
        parts.append(f"unchanged ({record['unchanged']}; --force restores it)")
    if record.get("model"):
        parts.append(f"model {record['model']}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- progress
RATE_WINDOW_S = 30.0      # megapixels per second over about the last this many seconds
BAR_WIDTH = 16            # the bars' width in cells: the names get what the figures leave


class _Display:
    """Progress on stderr while restoring.

    detailed (a terminal, not --json/--quiet): a row for the whole run (images done,
    megapixels done of the total the headers declare, MP/s, time left) and a row per
    image in work (tile passes done, MP/s, time left). Both rows' figures come from one
    estimate, the run's MP/s over the last RATE_WINDOW_S since the first tile pass (not
    the model's loading): the run's time left is its megapixels left at that rate, an
    image's is its own megapixels left at its share of it (the rate over the images in
    work), so that with one image in work the two say the same. Each row is one line of
    the terminal: the bar is BAR_WIDTH cells and the name is cut (with an ellipsis) to
    what the figures leave. Otherwise the plain image-count bar, which rich does not
    draw when stderr is not a terminal: then only the per-image lines appear.

    tiles() is called from the threads restoring images; every rich call is made
    outside self._lock, which rendering takes (so the two locks never wait on each other).
    """

    def __init__(self, jobs, *, quiet: bool, detailed: bool, ensemble: bool = False):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from magncli.images import declared_pixels
        self.jobs = jobs
        self.detailed = detailed and len(jobs) > 0
        self.unit = "passes" if ensemble else "tiles"      # with --ensemble, 8 passes a tile
        self._lock = threading.Lock()
        self._mp: List[float] = [((declared_pixels(j.source) or 0) / 1e6 if not j.error else 0.0)
                                 for j in jobs] if self.detailed else [0.0] * len(jobs)
        self._total_mp = sum(self._mp)
        self._finished_mp = 0.0
        self._running: Dict[int, Tuple[int, float, float]] = {}   # index -> (row, fraction, start)
        self._samples: Deque[Tuple[float, float]] = deque()        # (time, megapixels done), from the first tile pass
        self._done = 0
        if self.detailed:
            columns = (_Name(self), BarColumn(bar_width=BAR_WIDTH), _Figures(self))
        else:
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # Off when stderr is not a terminal: rich would draw nothing there but a blank line.
        # The one stderr console (common.console): lines printed while the bars are live
        # go through it too, above the bars.
        self.progress = Progress(*columns, console=common.console, transient=True,
                                 disable=quiet or not jobs or not common.console.is_terminal)
        self._bar = self.progress.add_task(self._run_description(), total=self._total_mp if self.detailed
                                           else len(jobs), kind="run")

    def __enter__(self) -> "_Display":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def _run_description(self) -> str:
        return f"{self._done}/{len(self.jobs)} images" if self.detailed else "restoring"

    def _mp_done(self) -> float:
        return self._finished_mp + sum(self._mp[i] * f for i, (_, f, _) in self._running.items())

    def _sample(self, now: float, mp_done: float) -> None:
        """Under self._lock."""
        self._samples.append((now, mp_done))
        while len(self._samples) > 2 and self._samples[1][0] < now - RATE_WINDOW_S:
            self._samples.popleft()

    def _rate(self, now: float) -> Optional[float]:
        """The run's MP/s over the window (under self._lock); None before there is one."""
        if not self._samples:
            return None
        t0, mp0 = self._samples[0]
        mp_done = self._mp_done()
        return (mp_done - mp0) / (now - t0) if now > t0 and mp_done > mp0 else None

    def tiles(self, index: int, done: int, total: int) -> None:
        """Image `index` has `done` of `total` tile passes behind it (any thread)."""
        if not self.detailed:
            if done == 0:
                self.progress.update(self._bar, description=escape(self.jobs[index].source.name))
            return
        now = time.monotonic()
        with self._lock:
            row = self._running.get(index, (None, 0.0, now))[0]
        if row is None:      # the name as it is (_Name reads no markup)
            row = self.progress.add_task(f"  {self.jobs[index].source.name}", total=total, kind="image",
                                         index=index)
        with self._lock:
            start = self._running.get(index, (row, 0.0, now))[2]
            self._running[index] = (row, done / total if total else 0.0, start)
            mp_done = self._mp_done()
            self._sample(now, mp_done)
        self.progress.update(row, completed=done, total=total)
        self.progress.update(self._bar, completed=mp_done)

    def finished(self, outcome) -> None:
        """An image is done, restored, skipped or failed (the main thread)."""
        with self._lock:
            row = self._running.pop(outcome.index, (None,))[0]
            self._done += 1
            if outcome.error is None and outcome.skipped is None:
                self._finished_mp += self._mp[outcome.index]
            else:      # failed or skipped: nothing more to do for it, its megapixels leave the total
                self._total_mp -= self._mp[outcome.index]
            mp_done = self._mp_done()
            if self._samples:
                self._sample(time.monotonic(), mp_done)
        if row is not None:
            self.progress.remove_task(row)
        if self.detailed:
            self.progress.update(self._bar, completed=mp_done, total=self._total_mp,
                                 description=self._run_description())
        else:
            self.progress.advance(self._bar)

    def figures(self, task) -> str:
        """The text after a row's bar (called while rich draws)."""
        with self._lock:
            now = time.monotonic()
            rate = self._rate(now)
            if task.fields.get("kind") == "image":
                index = task.fields["index"]
                start = self._running.get(index, (None, 0.0, now))[2]
                share = rate / max(1, len(self._running)) if rate is not None else None
                return image_figures(int(task.completed), int(task.total or 0), self._mp[index],
                                     now - start, self.unit, rate=share)
            return run_figures(self._mp_done(), self._total_mp, rate)

    def name_width(self, width: int) -> int:
        """The cells a row's name may take on a line of `width`: what the bar and the
        widest figures leave (with the spaces between the columns)."""
        tasks = self.progress.tasks if hasattr(self, "progress") else []   # rich draws once in Progress()
        widest = max((len(self.figures(task)) for task in tasks), default=0)
        return max(4, width - BAR_WIDTH - widest - 2)


def _clock(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _mp_per_s(rate: Optional[float]) -> str:
    """'0.41', '12.3', '456' MP/s: three figures or so, the width of the line kept short."""
    if rate is None:
        return "?"
    return f"{rate:.2f}" if rate < 10 else f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def image_figures(done: int, total: int, megapixels: float, elapsed: float, unit: str = "tiles",
                  rate: Optional[float] = None) -> str:
    """'12/48 tiles 0.41 MP/s ETA 0:00:09' for an image in work. rate: the MP/s of the
    run's estimate that this image gets; its time left is its megapixels left at that
    rate. Without a rate or megapixels (a header that declares no size), its own pace
    since it started ('?' MP/s before the first tile pass)."""
    if rate and megapixels and total:
        eta = megapixels * (total - done) / total / rate
    else:
        rate = megapixels * done / total / elapsed if done and total and elapsed > 0 and megapixels else None
        eta = elapsed * (total - done) / done if done else None
    return f"{done}/{total} {unit} {_mp_per_s(rate)} MP/s ETA {_clock(eta)}"


def run_figures(mp_done: float, mp_total: float, rate: Optional[float]) -> str:
    """'12.3/45.6 MP 1.23 MP/s ETA 0:00:27' for the run: rate is the MP/s of the recent
    window, the time left the megapixels left at that rate."""
    eta = (mp_total - mp_done) / rate if rate else None
    digits = 2 if mp_total < 10 else 1
    return f"{mp_done:.{digits}f}/{mp_total:.{digits}f} MP {_mp_per_s(rate)} MP/s ETA {_clock(eta)}"


class _Name(ProgressColumn):
    """A row's name, on one line: cut with an ellipsis to what the bar and the figures leave."""

    def __init__(self, display: _Display):
        super().__init__()
        self.display = display

    def get_table_column(self) -> Column:     # asked at every draw: the terminal may have been resized
        width = self.display.name_width(common.console.width)
        return Column(no_wrap=True, overflow="ellipsis", max_width=width)

    def render(self, task) -> Text:
        return Text(task.description, no_wrap=True, overflow="ellipsis")


class _Figures(ProgressColumn):
    """The text of _Display.figures after each row's bar."""

    def __init__(self, display: _Display):
        super().__init__(table_column=Column(no_wrap=True))
        self.display = display

    def render(self, task) -> Text:
        return Text(self.display.figures(task), no_wrap=True)
