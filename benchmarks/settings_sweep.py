"""One `train` setting at a time on MovieLens-100K's global temporal split: served and towers-alone test
nDCG@10 and coverage@10 (÷ most-popular's), beside the defaults, each a full `train` + `evaluate`.

    .venv/bin/python benchmarks/settings_sweep.py --set output_dim=128 --set id_dim=64 [--seeds 0 1 2]

Any tunable setting (``vistaste tune``'s), and ``min_breadth`` (the trend boost's breadth floor).

For reading, never for choosing (the test period is scored): this is how the README's lists of levers
tried on the coverage target were measured. Run `benchmarks/real_data.py` first (it fetches the data).
Writes ``benchmarks/results/settings_sweep.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.data.io import write_json
from vistaste.data.trends import TrendSetting
from vistaste.towers.config import TrainConfig
from vistaste.towers.evaluation import evaluate
from vistaste.towers.training import train
from vistaste.towers.tuning import parse_grid

HERE = Path(__file__).resolve().parent
FIGURES = ("ndcg@10", "coverage@10")


def run(data: Path, work: Path, name: str, overrides: dict, seed: int) -> dict:
    started = time.perf_counter()
    model = work / f"{name.replace('=', '-')}-{seed}"
    trained = train(data, model, TrainConfig(seed=seed, test_fraction=0.2, **overrides), verbose=False)
    results = evaluate(data, {"model": model}, seed=seed, include_two_tower=False, log=lambda *a: None)
    warm = results["slices"]["warm users"]["methods"]
    popular = warm["most-popular"]["coverage@10"]
    row = {"setting": name, "seed": seed, "validation": trained.history["best_val_ndcg@50"], "best_epoch": trained.history["best_epoch"],
           "seconds": round(time.perf_counter() - started)}
    # No boost chosen: evaluate reports the model once, and the towers alone are what is served.
    for label, method in (("served", "model"), ("towers alone", "model (no trend boost)" if "model (no trend boost)" in warm else "model")):
        row |= {f"{label} {f}": warm[method][f] for f in FIGURES} | {f"{label} coverage÷popular": warm[method]["coverage@10"] / popular}
    row["ALS nDCG@10"] = warm["ALS (implicit)"]["ndcg@10"]
    boost = TrendSetting.from_dict(trained.history["trend"])
    row["boost"] = boost.describe() if boost.weight > 0 else "none"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="one setting per run (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=HERE / ".work" / "ml-100k")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "settings_sweep")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "settings_sweep.json")
    args = parser.parse_args()
    if not (args.data / "interactions.parquet").exists():
        raise SystemExit(f"{args.data}: no MovieLens-100K here; run benchmarks/real_data.py first (it fetches and converts it)")
    settings = {"defaults": {}}
    for item in args.set:
        name, _, value = item.partition("=")
        if name.strip().replace("-", "_") == "min_breadth":  # a serving rule, not tunable on validation: only swept here
            settings[item] = {"min_breadth": float(value)}
            continue
        grid = parse_grid([item])
        if any(len(values) != 1 for values in grid.values()):
            raise SystemExit(f"--set {item}: one value per setting (a run per --set)")
        settings[item] = {k: v[0] for k, v in grid.items()}
    # Runs already in --out (same setting and seed) are kept, not repeated: an interrupted sweep resumes.
    done = {(r["setting"], r["seed"]): r for r in (json.loads(args.out.read_text())["runs"] if args.out.exists() else [])}
    rows = []
    for name, overrides in settings.items():
        for seed in args.seeds:
            rows.append(done.get((name, seed)) or run(args.data, args.work, name, overrides, seed))
            print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
            write(args.out, settings, rows)
    by_setting = pd.DataFrame(rows).drop(columns=["boost"]).groupby("setting", sort=False)
    print(by_setting.agg(["mean", "std"]).drop(columns=["seed", "best_epoch", "seconds"]).round(4).to_markdown())
    print(f"wrote {args.out}")


def write(out: Path, settings: dict, rows: list[dict]) -> None:
    by_setting = pd.DataFrame(rows).drop(columns=["boost"]).groupby("setting", sort=False)
    write_json({"dataset": "MovieLens-100K, global temporal split (last 20% of positives as test), warm users",
                "settings": settings, "runs": rows, "mean": by_setting.mean(numeric_only=True).to_dict("index")}, out)


if __name__ == "__main__":
    main()
