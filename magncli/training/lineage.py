"""Lineage recipes: how a published checkpoint was made, stage by stage, replayable with
one command (`magn train --recipe NAME --out RUN`).

A checkpoint is rarely one run: a blind denoiser trained from scratch, continued with
another loss, grown by a level map and trained again. train/recipes/NAME.toml lists each
run as a stage, with the settings it ran with, the step it was stopped and exported at,
which export (last or best) the next stage began from, and what each began from:

    checkpoint = "magn-s-local-denoise-gray"      # the published name
    sha256 = "e6d7..."                            # the file the last stage's export became

    [[stage]]
    name = "blind"                                # its run folder: RUN/1-blind
    config = ["../denoise-gray-blind.toml", "../cpu-s.toml"]   # recipe files, in order
    set = { arch = "magn-s-local" }               # what the command line's flags set
    stop = 100000                                 # exported at this step (default: steps)
    export = "last"                               # or "best": the best held-out validation
    made = "cec3..."                              # sha256 of the file it was published as

    [[stage]]
    name = "low-sigma"
    init_from = "previous"                        # the stage before's export (its weights
    ...                                           # are fitted as warm_start.py says)

A stage may instead begin from a published file, init_from = { weights = NAME, sha256 =
HEX }, which the replay checks. Runs of the time could change their planned steps on a
resume (the cosine's span); a stage records each change as [[stage.span]] at = STEP,
steps = N, and the replay makes the same change at the same step.

Replaying trains each stage in RUN/I-NAME and resumes where it stopped: run the command
again after a kill and it goes on; a finished stage is not trained again.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from magncli.errors import MagnError
from magncli.runs.folder import EXPORT_FILE, STATE_FILE
from magncli.training.config import TrainConfig, load_config

RECIPES_FOLDER = Path(__file__).resolve().parents[2] / "train" / "recipes"
_RECIPE_KEYS = {"checkpoint", "sha256", "stage"}
_STAGE_KEYS = {"name", "config", "set", "stop", "export", "made", "init_from", "span"}


@dataclass(frozen=True)
class Stage:
    name: str
    config: TrainConfig                        # the settings it started with
    stop: int                                  # the step it was exported at
    export_best: bool                          # which weights the next stage began from
    init_from: object = None                   # None, "previous" or {"weights", "sha256"}
    spans: Tuple[Tuple[int, int], ...] = ()    # (at step, new planned steps), in order
    made: Optional[str] = None                 # sha256 of the file it was published as


@dataclass(frozen=True)
class Lineage:
    path: Path
    checkpoint: str
    sha256: Optional[str]
    stages: List[Stage] = field(default_factory=list)


def is_lineage_recipe(path) -> bool:
    """Whether a TOML file is a lineage recipe ([[stage]] tables), not a flat recipe."""
    try:
        return "stage" in tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False


def find_recipe(spec: str) -> Path:
    """A recipe by published name (train/recipes/NAME.toml) or by path."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    named = RECIPES_FOLDER / f"{spec}.toml"
    if named.is_file():
        return named
    known = ", ".join(sorted(p.stem for p in RECIPES_FOLDER.glob("*.toml"))) or "none"
    raise MagnError(f"no recipe {spec!r}: give a file or the name of one in train/recipes/ ({known})")


def read_lineage(path) -> Lineage:
    """Parse and check a lineage recipe: every stage's settings load, in the order given."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise MagnError(f"{path}: not a readable TOML recipe ({e})") from None
    unknown = set(raw) - _RECIPE_KEYS
    if unknown or not raw.get("stage"):
        raise MagnError(f"{path}: not a lineage recipe ([[stage]] tables"
                        + (f"; unknown keys {', '.join(sorted(unknown))}" if unknown else "") + ")")
    stages = []
    for number, table in enumerate(raw["stage"], 1):
        where = f"{path}, stage {number}"
        unknown = set(table) - _STAGE_KEYS
        if unknown:
            raise MagnError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        init = table.get("init_from")
        if number == 1 and init == "previous":
            raise MagnError(f"{where}: the first stage has no stage before it to start from")
        if not (init is None or init == "previous"
                or (isinstance(init, dict) and set(init) == {"weights", "sha256"})):
            raise MagnError(f"{where}: init_from is \"previous\" or {{ weights = NAME, sha256 = HEX }}")
        config = load_config([path.parent / c for c in table.get("config", [])], table.get("set", {}))
        if config.init_from:
            raise MagnError(f"{where}: say where it starts with the stage's init_from, not a setting")
        spans = tuple((int(s["at"]), int(s["steps"])) for s in table.get("span", []))
        stop = int(table.get("stop", spans[-1][1] if spans else config.steps))
        if table.get("export", "last") not in ("last", "best"):
            raise MagnError(f"{where}: export is \"last\" or \"best\"")
        if not 0 < stop <= (spans[-1][1] if spans else config.steps):
            raise MagnError(f"{where}: stop {stop} is not within the stage's steps")
        stages.append(Stage(name=str(table.get("name", f"stage{number}")), config=config, stop=stop,
                            export_best=table.get("export") == "best", init_from=init, spans=spans,
                            made=table.get("made")))
    return Lineage(path=path, checkpoint=str(raw.get("checkpoint", path.stem)), sha256=raw.get("sha256"),
                   stages=stages)


def _start_weights(stage: Stage, before: Optional[Path]) -> Optional[str]:
    """What a stage's run starts from: nothing, the export of the stage before, or a
    published file whose content is the one recorded."""
    if stage.init_from is None:
        return None
    if stage.init_from == "previous":
        return str(before)
    from magncli.weights import file_sha256, resolve_weights
    name, sha256 = stage.init_from["weights"], stage.init_from["sha256"]
    found = file_sha256(resolve_weights(name))
    if found != sha256:
        raise MagnError(f"stage {stage.name} starts from {name} with sha256 {sha256[:12]}..., and the "
                        f"manifest now publishes {found[:12]}...: replay the stages that made it")
    return name


def replay(lineage: Lineage, out, threads: Optional[int] = None,
           reporter: Optional[Callable[[str], None]] = None) -> Path:
    """Train every stage in turn in out/I-NAME (resuming one that stopped, skipping one
    that is done); returns the last stage's export."""
    from magncli.checkpoints import read_checkpoint_meta
    from magncli.runs.export import export_run
    from magncli.runs.folder import load_run_config
    from magncli.training.loop import Trainer
    say = reporter or (lambda line: None)
    out = Path(out).expanduser()
    before: Optional[Path] = None
    for number, stage in enumerate(lineage.stages, 1):
        run = out / f"{number}-{stage.name}"
        export = run / EXPORT_FILE
        if export.is_file() and read_checkpoint_meta(export).get("stage_done") == stage.stop:
            say(f"stage {number} ({stage.name}): done, step {stage.stop}")
            before = export
            continue
        speed = {"threads": threads} if threads else {}
        if (run / STATE_FILE).is_file():
            trainer = Trainer(load_run_config(run, speed), run, resume=True, command=_command(lineage, out))
        else:
            config = _with(stage.config, init_from=_start_weights(stage, before), **speed)
            trainer = Trainer(config, run, command=_command(lineage, out))
        for at, steps in (*stage.spans, (stage.stop, None)):
            if trainer.step < at:
                say(f"stage {number} ({stage.name}): training from step {trainer.step} to {at}")
                trainer.run(until=at)
            trainer.close()
            if steps is not None and trainer.config.steps != steps:     # the recorded change of span
                trainer = Trainer(load_run_config(run, {"steps": steps, **speed}), run, resume=True,
                                  command=_command(lineage, out), new_span=True)
        export = export_run(run, best=stage.export_best)
        _mark_done(export, stage.stop)
        say(f"stage {number} ({stage.name}): exported step {read_checkpoint_meta(export)['step']} to {export}")
        before = export
    return before


def _with(config: TrainConfig, **changes) -> TrainConfig:
    from dataclasses import replace
    return replace(config, **{k: v for k, v in changes.items() if v is not None})


def _command(lineage: Lineage, out: Path) -> str:
    from magncli.fileio import home_as_tilde
    name = lineage.path.stem if lineage.path.parent == RECIPES_FOLDER else str(lineage.path)
    return home_as_tilde(f"magn train --recipe {name} --out {out}")


def _mark_done(export: Path, stop: int) -> None:
    """Record in the export's metadata that its stage is finished (a replay skips it)."""
    from magncli.checkpoints import read_checkpoint, save_weights
    state, meta = read_checkpoint(export)
    save_weights(export, state, dict(meta, stage_done=stop))
