"""`magn weights ...`: list, download, verify, locate and add pretrained checkpoints; publish a
training run as one, and regenerate the model cards.

Thin wrappers over magncli.weights; --json prints machine-readable output on stdout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from magncli import weights as w
from magncli.cli.common import cli_message, failure, note, out, print_json, stdout_console
from magncli.errors import MagnError

app = typer.Typer(
    name="weights",
    help="Pretrained checkpoints: list, download, verify, locate, add, scores, results, publish, cards.",
    no_args_is_help=True,
)

ManifestOpt = Annotated[Optional[Path], typer.Option(
    "--manifest", help="Manifest file (default: $MAGN_MANIFEST or the repository's weights/manifest.json).")]
ModelDirOpt = Annotated[Optional[Path], typer.Option(
    "--model-dir", help="Cache folder for checkpoints (default: $MAGN_HOME/weights or the user cache).")]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Never use the network (also MAGN_OFFLINE=1).")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes on stderr.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, for scripts.")]


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@app.command("list")
def list_cmd(manifest: ManifestOpt = None, model_dir: ModelDirOpt = None, as_json: JsonOpt = False) -> None:
    """List the manifest's checkpoints and whether each is cached, shipped, remote or missing."""
    m = w.load_manifest(manifest)
    rows = []
    for e in m.entries:
        status, path = w.entry_status(e, m, model_dir)
        rows.append({"name": e.name, "task": e.task, "channels": e.channels,
                     "levels": e.describe_levels(), "size": e.size, "sha256": e.sha256,
                     "status": status, "path": str(path) if path else None,
                     "default": e.default, "headline": e.headline_score()})
    if as_json:
        print_json(rows)
        return
    if not rows:
        note(f"no pretrained checkpoints listed in {m.path} yet; pass --weights PATH")
        return
    from rich import box
    from rich.table import Table
    # The name is what a user types next: never cut it (rich shortens the widest column
    # first). On 80 columns the levels and score wrap instead; no vertical rules take
    # their width, and the size is said only where a download is still to come.
    table = Table(title=f"checkpoints in {m.path}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for column in ("name", "task", "channels", "levels", "status", "PSNR"):
        table.add_column(column, no_wrap=column in ("name", "task", "channels"))
    for r in rows:
        status = f"{r['status']} ({_mb(r['size'])})" if r["status"] == "remote" else r["status"]
        table.add_row(r["name"] + (" *" if r["default"] else ""), r["task"],
                      "gray" if r["channels"] == 1 else "color", r["levels"] or "-",
                      status, r["headline"] or "-")
    stdout_console.print(table)
    note("* default for its task and channels")


@app.command("download")
def download_cmd(
    names: Annotated[Optional[List[str]], typer.Argument(help="Checkpoint names from the manifest.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Download every checkpoint of the manifest.")] = False,
    manifest: ManifestOpt = None, model_dir: ModelDirOpt = None, offline: OfflineOpt = False,
    quiet: QuietOpt = False, as_json: JsonOpt = False,
) -> None:
    """Download checkpoints into the cache (verified); prints their paths."""
    m = w.load_manifest(manifest)
    if all_:
        entries = m.entries
        if not entries:
            raise MagnError(f"{m.path} lists no checkpoints yet")
    elif names:
        entries = [m.get(n) for n in names]
    else:
        raise MagnError("name the checkpoints to download, or pass --all")
    results = []
    for e in entries:
        try:
            path = w.fetch_checkpoint(e, m, model_dir=model_dir, offline=True if offline else None, quiet=quiet)
            results.append({"name": e.name, "ok": True, "path": str(path), "error": None})
            if not as_json:
                out(str(path))
        except MagnError as err:
            results.append({"name": e.name, "ok": False, "path": None, "error": cli_message(err)})
            failure(str(err))
    if as_json:
        print_json(results)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


@app.command("verify")
def verify_cmd(
    names: Annotated[Optional[List[str]], typer.Argument(help="Only these checkpoints (default: all).")] = None,
    manifest: ManifestOpt = None, model_dir: ModelDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Re-hash every cached and shipped checkpoint file; exit 1 if any does not match."""
    m = w.load_manifest(manifest)
    results = w.verify_local_files(m, model_dir, names)
    if as_json:
        print_json([{"name": r.name, "where": r.where, "path": str(r.path), "ok": r.ok,
                      "expected": r.expected, "actual": r.actual} for r in results])
    else:
        if not results:
            note("no local checkpoint files to verify")
        for r in results:
            out(f"{'ok' if r.ok else 'MISMATCH':8} {r.where:7} {r.path}")
    bad = [r for r in results if not r.ok]
    for r in bad:
        failure(f"{r.path} ({r.name}) does not match its sha256: expected {r.expected}, got {r.actual}; "
               f"delete it and run `magn weights download {r.name}`")
    if bad:
        raise typer.Exit(1)


@app.command("path")
def path_cmd(
    name: Annotated[str, typer.Argument(help="Checkpoint name from the manifest.")],
    manifest: ManifestOpt = None, model_dir: ModelDirOpt = None, as_json: JsonOpt = False,
) -> None:
    """Print the verified local file of a checkpoint (never downloads; exit 1 if absent)."""
    m = w.load_manifest(manifest)
    entry = m.get(name)
    local = w.local_checkpoint(entry, m, model_dir=model_dir, quiet=as_json)
    target = local or (w.weights_cache_dir(model_dir) / entry.file)
    if as_json:
        print_json({"name": entry.name, "path": str(target), "exists": local is not None,
                     "sha256": entry.sha256, "size": entry.size})
        if local is None:
            raise typer.Exit(1)
        return
    if local is None:
        raise MagnError(f"checkpoint {name} is not downloaded yet (it would be at {target}); "
                        f"run `magn weights download {name}`")
    out(str(local))


@app.command("add")
def add_cmd(
    file: Annotated[Path, typer.Argument(help="The checkpoint file (.safetensors with magn metadata).")],
    name: Annotated[str, typer.Option("--name", help="Unique checkpoint name.")],
    task: Annotated[Optional[str], typer.Option(
        "--task", help="denoise, dejpeg or demosaic (default: from the file's metadata).")] = None,
    channels: Annotated[Optional[int], typer.Option(
        "--channels", help="1 (gray) or 3 (color); default: the config's in_channels.")] = None,
    levels: Annotated[Optional[str], typer.Option(
        "--levels", help="Levels it serves: 25, 15,25,50, or a blind range 0-55 "
                         "(default: what `magn train` recorded in the file).")] = None,
    urls: Annotated[Optional[List[str]], typer.Option("--url", help="Download URL (repeatable).")] = None,
    default: Annotated[bool, typer.Option("--default", help="Make it the default for its task and channels.")] = False,
    copy_file: Annotated[bool, typer.Option(
        "--copy/--no-copy", help="Copy the file next to the manifest, or only record its file name.")] = True,
    replaces: Annotated[Optional[List[str]], typer.Option(
        "--replaces", help="An entry this one supersedes (repeatable; may be --name itself, to publish "
                           "a newer export): it leaves the manifest and its shipped file is deleted.")] = None,
    manifest: ManifestOpt = None,
) -> None:
    """Add a checkpoint to the manifest (hash, size, arch and config are read from the file)."""
    entry = w.add_checkpoint(file, name=name, task=task, channels=channels, levels=levels,
                             urls=urls or [], default=default, copy_file=copy_file,
                             manifest_path=manifest, replaces=replaces or [])
    m = w.load_manifest(manifest)
    note(f"added {entry.name} ({entry.file}, {entry.size} bytes, sha256 {entry.sha256}) to {m.path}; "
         f"record its scores with `magn weights scores {entry.name} RESULTS.json`")


@app.command("scores")
def scores_cmd(
    name: Annotated[str, typer.Argument(help="Checkpoint name from the manifest.")],
    results: Annotated[List[Path], typer.Argument(help="`magn eval --model NAME --output X.json` results.")],
    manifest: ManifestOpt = None,
) -> None:
    """Record a checkpoint's benchmark scores in the manifest from `magn eval` JSON results."""
    entry = w.record_scores(name, results, manifest_path=manifest)
    note(f"recorded {len(entry.scores)} scores for {entry.name} in {w.load_manifest(manifest).path}")


@app.command("results")
def results_cmd(
    name: Annotated[str, typer.Argument(help="A published checkpoint's name.")],
    results: Annotated[List[Path], typer.Argument(help="`magn eval ... --output X.json` results to add.")],
    manifest: ManifestOpt = None,
) -> None:
    """Add evaluated rows (a peer's, another subsampling's) to a published checkpoint's
    results table and model card; the command that made them is listed with them."""
    from magncli.runs.publish import add_results
    merged = add_results(name, results, manifest_path=manifest)
    note(f"merged {merged} rows into the results of {name}; model cards rewritten")


@app.command("publish")
def publish_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A run folder of `magn train` (it may still be training).")],
    name: Annotated[str, typer.Option("--name", help="The checkpoint's name (an existing one is replaced).")],
    best: Annotated[bool, typer.Option(
        "--best", help="The best held-out validation so far (model_best), not the last checkpoint.")] = False,
    replaces: Annotated[Optional[List[str]], typer.Option(
        "--replaces", help="Another entry this one supersedes (repeatable).")] = None,
    sets: Annotated[Optional[str], typer.Option(
        "--sets", help="The test sets to score, comma-separated (default: every set of the task).")] = None,
    score: Annotated[bool, typer.Option(
        "--score/--no-score", help="Score it by the task's protocol (`magn eval`, minutes to an hour), "
                                   "or leave that for later.")] = True,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Folder of the test sets.")] = None,
    manifest: ManifestOpt = None,
) -> None:
    """Publish a training run as the default checkpoint of its task: export, manifest, validation
    curve, scores and model card in one step."""
    from magncli.cli.common import comma_list
    from magncli.runs.publish import publish
    done = publish(run, name, best=best, replaces=replaces or [], sets=comma_list(sets, "--sets"),
                   score=score, data_root=data_root, manifest_path=manifest, progress=note)
    note(f"published {done.name}: step {done.step} of {done.planned_steps}, {done.cpu_hours:.2f} CPU-hours, "
         f"sha256 {done.sha256[:12]}...; " + (f"{done.scored_rows} rows scored into {done.results}"
                                              if done.scored_rows else f"not scored: {done.eval_command}"))


@app.command("cards")
def cards_cmd(
    check: Annotated[bool, typer.Option("--check", help="Write nothing; exit 1 if the cards are out of date.")] = False,
    manifest: ManifestOpt = None,
) -> None:
    """Regenerate the model cards of weights/README.md from the manifest and weights/results/."""
    from magncli.runs.cards import write_cards
    if write_cards(manifest, check=check):
        note("the model cards are up to date")
    elif check:
        raise MagnError("the model cards in weights/README.md are out of date: run `magn weights cards`")
    else:
        note("model cards rewritten")
