"""`magn eval`: score models and baselines on benchmark sets by the protocol."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from magncli.cli.common import (CompileOpt, DeviceOpt, EnsembleOpt, OverlapOpt, PatternOpt, PrecisionOpt,
                                SubsamplingOpt, TaskOpt, TileOpt, TilingOpt, command_line, comma_list, comma_numbers,
                                inference_options, note, stdout_console)
from magncli.engine_defaults import ENGINE
from magncli.datasets import sets_for
from magncli.degrade import DEFAULT_PATTERN, DEFAULT_SUBSAMPLING
from magncli.eval_methods import BASELINES, DEFAULT_MODEL
from magncli.evaluate import run_eval
from magncli.results import check_results_path, results_tables, write_results
from magncli.tasks import TASKS

app = typer.Typer()

_DEFAULT_LEVELS = "; ".join(f"{','.join(map(str, t.default_levels))} ({t.name})"
                            for t in TASKS.values() if t.default_levels)


@app.command("eval")
def eval_command(
    task: TaskOpt,
    sets: Annotated[Optional[str], typer.Option(
        "--sets", help="Comma-separated set names or folders (default: every set of the task).")] = None,
    levels: Annotated[Optional[str], typer.Option(
        "--levels", help=f"Comma-separated sigmas (denoise) or JPEG qualities (dejpeg); default {_DEFAULT_LEVELS}.")
    ] = None,
    models: Annotated[Optional[List[str]], typer.Option(
        "--model", "-m",
        help=f"Repeatable. Baselines: {', '.join(BASELINES)}; {DEFAULT_MODEL}: the checkpoint `magn restore` "
             f"uses for the task and each set's channels; or a checkpoint name/path, or ARCH:PATH. "
             f"Without -m: input and {DEFAULT_MODEL}.")
    ] = None,
    pattern: PatternOpt = DEFAULT_PATTERN,
    subsampling: SubsamplingOpt = DEFAULT_SUBSAMPLING,
    channels: Annotated[Optional[str], typer.Option(
        "--channels", help="gray | color (default: the set's first track; LIVE1 gray = Y).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Noise seed (one RandomState(seed) per image).")] = 0,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder of the test sets.")] = None,
    inputs: Annotated[Optional[Path], typer.Option(
        "--inputs", help="Already-degraded images, matched to the set by file name (one set, one level).")] = None,
    outputs: Annotated[List[Path], typer.Option(
        "--output", "-o", help="Results file: .json, .csv or .md (repeatable).")] = [],  # noqa: B006
    save_images: Annotated[Optional[Path], typer.Option("--save-images", help="Folder for restored images.")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="PNG sheet of labelled crops.")] = None,
    device: DeviceOpt = ENGINE.device,
    precision: PrecisionOpt = ENGINE.precision,
    tile: TileOpt = ENGINE.tile,
    overlap: OverlapOpt = ENGINE.overlap,
    ensemble: EnsembleOpt = ENGINE.ensemble,
    tiling: TilingOpt = ENGINE.tiling,
    compile: CompileOpt = ENGINE.compile,
    blind: Annotated[bool, typer.Option(
        "--blind", help="Also score each model with a level map not told the level (as `magn restore` "
                        "runs it without --sigma), as a row of its own: NAME (blind).")] = False,
    quantize: Annotated[bool, typer.Option("--quantize", help="Score outputs rounded to 8 bits.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")] = False,
) -> None:
    """Evaluate models on benchmark sets; print tables and optionally write results."""
    for output in outputs:
        check_results_path(output, overwrite)  # fail before the run, not after it
    set_names = comma_list(sets, "--sets") or sets_for(task, channels)  # default: every set of the task
    models = models or ["input", DEFAULT_MODEL]
    # Baselines run no model: options only when a checkpoint is among the models.
    options = None if all(m in BASELINES for m in models) else inference_options(
        device, precision, tile, overlap, ensemble, tiling, compile)
    rows = run_eval(task, set_names, comma_numbers(levels, "--levels"), models, seed=seed,
                    data_root=data_root, options=options, save_images=save_images, quantize=quantize,
                    channels=channels, pattern=pattern, subsampling=subsampling, inputs=inputs, sheet=sheet,
                    overwrite=overwrite, progress=note, blind=blind)
    for table in results_tables(rows):
        stdout_console.print(table)
    # Each row says how it was made, so that the numbers can be regenerated (model cards).
    command = command_line()
    for row in rows:
        row["command"] = command
    for output in outputs:
        write_results(rows, output, overwrite)
        note(f"results written to {output}")
