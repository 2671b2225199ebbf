"""`vistaste tune`: choose the settings that differ between datasets by a small search on validation only.

Some defaults cannot be right for every log. The softmax temperature is the measured case (README,
"Choosing the defaults"): on MovieLens-100K validation peaks at 0.1, on the built-in worlds it keeps
rising to 0.2, where test warm recall@50 is 15% higher than at 0.1. ``tune`` trains one complete model
(:func:`~vistaste.towers.training.train`: early stopping, trend boost, refit) per point of a grid, scores
each on the validation slice it was early-stopped on (the towers' validation nDCG@50, the metric that
chose its epochs), and ships the best. The test period is never read: under the default refit
(``before-test``) no trial sees an event after the test cut.

Trials are saved beside the output (``.OUT.tuning/``), so a killed search resumes with the trials it
finished; the chosen model is moved into OUT atomically and its ``history.json`` records the search.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
from pathlib import Path

import pandas as pd

from vistaste.data.io import atomic_path, write_json
from vistaste.towers.config import VALIDATION_METRIC, TrainConfig

# The small search `vistaste tune` runs without --grid: the temperature is the one setting measured to
# need choosing per dataset (0.1 on MovieLens-100K's validation, 0.2 on the built-in worlds').
DEFAULT_GRID: dict[str, tuple] = {"temperature": (0.05, 0.1, 0.2)}
# Settings a grid may vary: numbers whose best value depends on the log. Split, refit and seed are the
# experiment's, not the model's, and stay as given.
TUNABLE = ("temperature", "learning_rate", "output_dim", "batch_size", "id_dim", "id_dropout", "recency_half_life_days",
           "logq_strength", "min_item_interactions", "history_length", "input_dim", "uniform_negatives")


def parse_grid(items: list[str]) -> dict[str, tuple]:
    """``["temperature=0.05,0.1", "learning_rate=1e-3,3e-3"]`` -> ``{"temperature": (0.05, 0.1), ...}``,
    each value cast to the type of the setting's default; a clear error for anything else."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    grid: dict[str, tuple] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ValueError(f"grid entry {item!r}: expected NAME=V1,V2,... (e.g. temperature=0.05,0.1,0.2)")
        if name not in TUNABLE:
            raise ValueError(f"grid entry {item!r}: {name!r} cannot be tuned; tunable settings: {', '.join(TUNABLE)}")
        if name in grid:
            raise ValueError(f"grid entry {item!r}: {name} is given twice")
        kind = type(fields[name].default) if fields[name].default is not None else float
        try:
            parsed = tuple(_value(kind, v.strip()) for v in values.split(","))
        except ValueError:
            raise ValueError(f"grid entry {item!r}: every value of {name} must be a {kind.__name__}") from None
        if name == "recency_half_life_days":  # as on the command line: 0 turns recency weighting off
            parsed = tuple(v or None for v in parsed)
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"grid entry {item!r}: a value is repeated")
        grid[name] = parsed
    return grid


def _value(kind: type, text: str):
    if kind is int:
        number = float(text)
        if not number.is_integer():
            raise ValueError(text)
        return int(number)
    return kind(text)


def grid_points(config: TrainConfig, grid: dict[str, tuple]) -> list[dict]:
    """Every combination of the grid's values, in the order given (the first wins a tie)."""
    if not grid:
        raise ValueError("an empty grid: give at least one setting to search")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    for point in points:
        dataclasses.replace(config, **point)  # each point must be a valid TrainConfig (a clear error up front)
    return points


def _settings(point: dict, between: str) -> list[str]:
    """Each setting as ``name<between>value``, floats in their shortest form."""
    return [f"{k}{between}{v:g}" if isinstance(v, float) else f"{k}{between}{v}" for k, v in point.items()]


def _trial_name(point: dict) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", "-".join(_settings(point, "=")))


def choose(trials: list[dict]) -> dict:
    """The trial with the best validation score; the earliest in grid order on a tie."""
    return max(trials, key=lambda t: (t["validation"], -trials.index(t)))


def tune(dataset_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None, grid: dict[str, tuple] | None = None,
         vectors_path: str | Path | None = None, extra_logs: list[pd.DataFrame] | None = None, log=print):
    """Train ``config`` at every point of ``grid`` (default :data:`DEFAULT_GRID`), keep the one with the best
    validation nDCG@50 in ``out_dir``, and return it (a :class:`~vistaste.towers.trained.TrainedTwoTower`
    whose ``history["tuning"]`` lists every trial)."""
    from vistaste.towers.trained import TrainedTwoTower
    from vistaste.towers.training import train

    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    config = config or TrainConfig()
    grid = dict(grid or DEFAULT_GRID)
    points = grid_points(config, grid)
    work = out_dir.with_name(f".{out_dir.name}.tuning")
    key = _search_key(dataset_dir, vectors_path, extra_logs)
    if work.exists() and (not (work / "search.json").exists() or json.loads((work / "search.json").read_text()) != key):
        shutil.rmtree(work)  # trials of another dataset, vectors or feedback: never reused
    work.mkdir(parents=True, exist_ok=True)
    write_json(key, work / "search.json")
    trials = []
    for number, point in enumerate(points, 1):
        trial_config = dataclasses.replace(config, **point)
        trial_dir = work / f"{number:02d}-{_trial_name(point)}"  # numbered: values that print alike stay apart
        history = _finished(trial_dir, trial_config)
        if history is None:
            train(dataset_dir, trial_dir, trial_config, vectors_path=vectors_path, extra_logs=extra_logs, verbose=False, log=log)
            history = _finished(trial_dir, trial_config)
            resumed = ""
        else:
            resumed = " (finished before, reused)"
        trial = {"settings": point, "validation": history[f"best_val_{VALIDATION_METRIC}"], "best_epoch": history["best_epoch"],
                 "trend_weight": history["trend"]["weight"], "directory": trial_dir.name}
        trials.append(trial)
        log(f"trial {number}/{len(points)}  {_describe(point)}: validation {VALIDATION_METRIC} {trial['validation']:.4f} "
            f"(best epoch {trial['best_epoch']}){resumed}")
    best = choose(trials)
    chosen = TrainedTwoTower.load(work / best["directory"])
    chosen.history["tuning"] = {"metric": f"validation {VALIDATION_METRIC} (the towers alone, as early stopping scores them)",
                                "grid": {k: list(v) for k, v in grid.items()}, "chosen": best["settings"],
                                "trials": [{k: v for k, v in t.items() if k != "directory"} for t in trials]}
    # Ship the chosen trial as trained (the same files, not a re-save), with the search in its history.
    with atomic_path(out_dir) as tmp:
        shutil.copytree(work / best["directory"], tmp)
        write_json(chosen.history, tmp / "history.json")
    shutil.rmtree(work, ignore_errors=True)
    log(f"chose {_describe(best['settings'])} (validation {VALIDATION_METRIC} {best['validation']:.4f}); model -> {out_dir}")
    return chosen


def _search_key(dataset_dir: Path, vectors_path, extra_logs) -> dict:
    """What the trials were trained on: the dataset's tables (path, size, modification time), the vectors
    and the extra logs. A search resumes only over trials with the same key."""
    files = sorted(p for p in dataset_dir.iterdir() if p.is_file() and p.suffix in (".parquet", ".csv")) if dataset_dir.is_dir() else []
    if vectors_path is not None:
        files.append(Path(vectors_path))
    stamp = {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()}
    extra = [[len(df), str(df["timestamp"].max()) if "timestamp" in df and len(df) else None] for df in (extra_logs or [])]
    return json.loads(json.dumps({"dataset": str(dataset_dir.resolve()), "files": stamp, "extra_logs": extra}, default=str))


def _describe(point: dict) -> str:
    return ", ".join(_settings(point, " "))


def _finished(trial_dir: Path, config: TrainConfig) -> dict | None:
    """The history of a finished trial trained with exactly ``config``, else None (absent, or other settings)."""
    try:
        meta = json.loads((trial_dir / "config.json").read_text())
        history = json.loads((trial_dir / "history.json").read_text())
    except (OSError, ValueError):
        return None
    saved = json.loads(json.dumps(meta["config"], default=str))
    wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return history if saved == wanted else None


__all__ = ["DEFAULT_GRID", "TUNABLE", "choose", "grid_points", "parse_grid", "tune"]
