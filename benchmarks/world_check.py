"""Issue 11's built-in world target, re-measured with today's defaults: `train` with no flags, then
`evaluate` (the model's split: the world's default global temporal split), on the built-in worlds with and
without the behaviours, seeds 0-2. The target: two-tower warm recall@50 >= 0.33 on the world before the
behaviours, new users and cold items not worse than before.

    .venv/bin/python benchmarks/world_check.py                       # both worlds, seeds 0-2 (~15 min on 2 cores)
    .venv/bin/python benchmarks/world_check.py --worlds world-no-behaviours --seeds 0

Worlds are generated and embedded (default backbone) under ``--work`` once, shared with benchmarks/tune.py.
Writes ``benchmarks/results/world_check.json`` after every run (finished runs are reused) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS, quiets TensorFlow)
from vistaste.data.io import write_json
from vistaste.towers.evaluation import evaluate
from vistaste.towers.training import train

HERE = Path(__file__).resolve().parent
WORLDS = ("world-no-behaviours", "world")
SLICES = ("warm users", "new users", "cold items")
METRICS = ("recall@50", "ndcg@10", "coverage@10")


def run_one(name: str, seed: int, work: Path) -> dict:
    from tune import dataset  # the same worlds as benchmarks/tune.py (generated with the run's seed)

    done = work / "runs" / f"check-{name}-{seed}.json"
    if done.exists():
        return json.loads(done.read_text())
    data, config = dataset(name, seed, work)
    started = time.perf_counter()
    model = work / "models" / f"check-{name}-{seed}"
    trained = train(data, model, config, verbose=False)
    report = evaluate(data, {"two-tower": model}, seed=seed, baselines=False, log=lambda *a: None)
    record = {"world": name, "seed": seed, "seconds": time.perf_counter() - started,
              "collaborative": {k: trained.history["collaborative"].get(k) for k in ("beta", "gamma")},
              "trend": {k: trained.history["trend"].get(k) for k in ("weight", "slots")}, "slices": {}}
    for slice_name, block in report["slices"].items():
        record["slices"][slice_name] = {"users": block["users"], **{
            method: {m: values[m] for m in METRICS} for method, values in block["methods"].items()}}
    write_json(record, done)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worlds", default=",".join(WORLDS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=HERE / ".work" / "tune")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "world_check.json")
    args = parser.parse_args()
    runs = []
    for name in args.worlds.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            runs.append(run_one(name, seed, args.work))
            write_json({"runs": runs}, args.out)
            print(f"{name} seed {seed}: " + ", ".join(
                f"{s} {runs[-1]['slices'][s]['two-tower']['recall@50']:.3f}" for s in SLICES if s in runs[-1]["slices"]), flush=True)
    print(f"\n| world | method | {' | '.join(f'{s}: recall@50' for s in SLICES)} |\n|---|---|---|---|---|")
    for name in dict.fromkeys(r["world"] for r in runs):
        mine = [r for r in runs if r["world"] == name]
        for method in ("two-tower", "two-tower (no trend boost)"):
            cells = []
            for s in SLICES:
                values = [r["slices"][s][method]["recall@50"] for r in mine if method in r["slices"].get(s, {})]
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else "-")
            print(f"| {name} | {method} | {' | '.join(cells)} |")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
