"""The long run in a world whose users get bored and follow trends (issue 13): does diversity pay?

    python benchmarks/longrun.py                          # 28 days x 3 seeds, 600 items, 400 users: ~6.5 min on 2 cores
    python benchmarks/longrun.py --seeds 5 --users 800    # closer to the issue's protocol (>= 5 seeds), ~4x longer
    python benchmarks/longrun.py --behaviours off         # the same arms in the world without the behaviours

Generates a world with ``WorldConfig.with_behaviours`` (satiation, slate boredom, trend following,
return; no images: stand-in item vectors), then runs the online simulator (`vistaste simulate`'s code)
for ``--days`` days after ``--warmup`` logged days, arms plain two-tower retrieval, two-tower + MMR,
two-tower + DPP and the oracle, each re-ranker at its default trade-off (nothing is tuned here, so there
are no validation seeds to keep apart). Prints per arm: clicks per user over the whole run (leaving
users count), the change against plain two-tower paired by seed, CTR, the share of users still
returning on the last day, intra-list and over-time diversity, cold-item clicks and regret vs the
(myopic) oracle, each with a 95% t interval over seeds; writes benchmarks/results/longrun.json
(results/longrun_off.json with ``--behaviours off``). Figures vary with the machine's load only in
their times; the simulated numbers are determined by the seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.bench.simulate import SimulationConfig, run_seed, summarise, t_interval
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.io import write_json

ARMS = ("two-tower", "two-tower+MMR", "two-tower+DPP", "oracle")
BASELINE = "two-tower"


def paired_change(records: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per arm: relative change in clicks per user over the run against ``baseline``, per seed (the arms
    share users, dice and starting log within a seed), then mean and 95% t interval over seeds."""
    totals = records.groupby(["arm", "seed"])["clicks"].sum().unstack("arm")
    rows = {}
    for arm in totals.columns:
        change = (totals[arm] / totals[baseline] - 1).dropna()
        mean, half = t_interval(change)
        rows[arm] = {"clicks_change": mean, "clicks_change_ci95": half}
    return pd.DataFrame(rows).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--days", type=int, default=28, help="simulated days")
    parser.add_argument("--warmup", type=int, default=14, help="logged days every arm starts from")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--behaviours", choices=("on", "off"), default="on")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/longrun"))
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/longrun.json (longrun_off.json when off)")
    args = parser.parse_args()
    out = args.out or Path("benchmarks/results") / ("longrun.json" if args.behaviours == "on" else "longrun_off.json")

    shape = dict(items=args.items, users=args.users, days=args.warmup + args.days, seed=0, images=False)
    world_config = WorldConfig.with_behaviours(**shape) if args.behaviours == "on" else WorldConfig(**shape)
    world_dir = args.work / f"world-{args.behaviours}-{args.items}-{args.users}-{args.warmup + args.days}"
    started = time.perf_counter()
    if not (world_dir / "summary.json").exists():
        generate_world(world_dir, world_config, progress=False)
    world = json.loads((world_dir / "summary.json").read_text())
    print(f"world: {args.items} items, {args.users} users, {args.warmup + args.days} days, behaviours {args.behaviours} "
          f"{world_config.behaviours}; logging policy CTR {world['ctr']:.4f} "
          f"({world['clicks']} clicks / {world['impressions']} impressions)")

    config = SimulationConfig(warmup_days=args.warmup, days=args.days, seeds=tuple(range(args.seeds)), arms=ARMS)
    records = []
    for seed in config.seeds:
        t = time.perf_counter()
        records.extend(run_seed(world_dir, config, seed, progress=False)["records"])
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s")
    frame = pd.DataFrame(records)
    summary = summarise(frame).join(paired_change(frame))
    columns = ["total_clicks_per_user", "total_clicks_per_user_ci95", "clicks_change", "clicks_change_ci95", "ctr", "ctr_ci95",
               "returning_share_last_day", "returning_share_last_day_ci95", "diversity", "temporal_diversity", "cold_clicks",
               "regret", "regret_clicks"]
    print()
    print(summary[columns].astype(float).to_string(float_format=lambda v: f"{v:.4f}"))
    daily = frame.pivot_table(index="day", columns="arm", values="clicks_per_eligible_user", aggfunc="mean")[list(ARMS)]
    print("\nclicks per eligible user by day (mean over seeds):")
    print(daily.iloc[:: max(1, len(daily) // 7)].to_string(float_format=lambda v: f"{v:.3f}"))
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s in all")

    result = {
        "world": {**dataclasses.asdict(world_config), "logging_ctr": world["ctr"], "logged_clicks": world["clicks"],
                  "logged_impressions": world["impressions"]},
        "simulation": dataclasses.asdict(config),
        "summary": summary.astype(float).reset_index(names="arm").to_dict(orient="records"),
        "clicks_per_eligible_user_by_day": {str(day): row for day, row in daily.to_dict(orient="index").items()},
        "seconds": elapsed,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
