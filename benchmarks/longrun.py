"""The long run in a world whose users get bored and follow trends (issue 13): does diversity pay, and
which setting should serving run?

    python benchmarks/longrun.py --validate               # choose the setting on validation seeds (~25 min)
    python benchmarks/longrun.py                          # report: 8 arms x 28 days x 5 seeds, default strengths
    python benchmarks/longrun.py --strength weak          # satiation and boredom at half the default
    python benchmarks/longrun.py --strength strong        # ... at twice the default (boredom capped at 1)
    python benchmarks/longrun.py --behaviours off         # the world without the behaviours: what diversity costs there

Protocol. Settings are chosen on *validation* runs (``--validate``: world seed 1, simulation seeds 100
and 101, default strengths and behaviours off) and reported on other runs (world seed 0, simulation seeds
0-4), at strengths the setting was not chosen on too. ``--validate`` compares ``GRID`` (fixed DPP
trade-offs and the adaptive re-ranker's settings) against plain two-tower and keeps the setting with the
largest gain in clicks per user with behaviours on among those costing at most 2% with them off; that
choice is serving's default (``vistaste.serving.rerank``), and the report runs the serving defaults.

Each run generates its world once (``WorldConfig.with_behaviours``, no images: stand-in item vectors),
then runs the online simulator (`vistaste simulate`'s code; two-tower arms serve through the serving path
itself) for ``--days`` days after ``--warmup`` logged days. Arms: plain two-tower retrieval, + DPP, + MMR
(each at its serving default), + the adaptive re-ranker (diversity per user from how early they leave
slates), + DPP at 0.7 (the best fixed trade-off on validation), the (myopic) oracle, most-popular and
pretrained-kNN. Printed per arm: clicks per user over the
run (users who stop coming count), the change against plain two-tower paired by seed (the arms share
users, dice and starting log within a seed), CTR, the share of users still returning on the last day
(and its paired difference), intra-list and over-time diversity, cold-item clicks and regret, each with
a 95% t interval over seeds. Writes benchmarks/results/longrun[_weak|_strong|_off].json (and
longrun_validation.json); the simulated figures are determined by the seeds, only the times vary.
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
from vistaste.bench.sim_metrics import summarise, t_interval
from vistaste.bench.simulate import SimulationConfig, run_seed
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.bench.world_config import BEHAVIOUR_STRENGTHS
from vistaste.data.io import write_json

ARMS = ("two-tower", "two-tower+DPP", "two-tower+MMR", "two-tower+adaptive", "two-tower+DPP0.7", "oracle", "most-popular",
        "pretrained-kNN")
# Reported beside the serving defaults: the best fixed setting on validation (GRID's DPP0.7), so the adaptive
# re-ranker is compared with a strength tuned to the default world too.
REPORT_VARIANTS = {"two-tower+DPP0.7": {"method": "dpp", "trade_off": 0.7}}
BASELINE = "two-tower"
# Satiation and boredom strengths the setting is not chosen on: multiples of BEHAVIOUR_STRENGTHS' (boredom <= 1).
STRENGTHS = {"weak": 0.5, "default": 1.0, "strong": 2.0}
REPORT_WORLD = 0  # report seeds: 0, 1, ... (--seeds)
VALIDATION_WORLD, VALIDATION_SEEDS = 1, (100, 101)
MAX_COST_OFF = 0.02  # the chosen setting may cost at most this share of clicks with the behaviours off
# The settings compared on validation: fixed window-DPP trade-offs and the adaptive re-ranker
# (engaged θ, bored θ, the early-exit share at which a user counts as fully bored).
GRID: dict[str, dict] = {
    "DPP0.7": {"method": "dpp", "trade_off": 0.7},
    "DPP0.5": {"method": "dpp", "trade_off": 0.5},
    "adaptive-0.9/0.5@0.5": {"method": "adaptive", "trade_off": 0.9, "adaptive": {"bored": 0.5, "full_exit": 0.5}},
    "adaptive-0.9/0.4@0.3": {"method": "adaptive", "trade_off": 0.9, "adaptive": {"bored": 0.4, "full_exit": 0.3}},
    "adaptive-0.9/0.4@0.2": {"method": "adaptive", "trade_off": 0.9, "adaptive": {"bored": 0.4, "full_exit": 0.2}},
    "adaptive-0.9/0.3@0.2": {"method": "adaptive", "trade_off": 0.9, "adaptive": {"bored": 0.3, "full_exit": 0.2}},
}


def world_config(behaviours: str, strength: str, **shape) -> WorldConfig:
    """The world of a run: behaviours off (the world before issue 13), or on with satiation and boredom at
    ``STRENGTHS[strength]`` times the default (trend following and return at theirs)."""
    if behaviours == "off":
        return WorldConfig.without_behaviours(**shape)
    scale = STRENGTHS[strength]
    return WorldConfig.with_behaviours(satiation=BEHAVIOUR_STRENGTHS["satiation"] * scale,
                                       boredom=min(1.0, BEHAVIOUR_STRENGTHS["boredom"] * scale), **shape)


def paired_change(records: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Per arm, paired by seed against ``baseline`` (the arms share users, dice and starting log within a
    seed), mean and 95% t interval over seeds of: the relative change in clicks over the run
    (``clicks_change``) and the difference in the share of users returning on the last day
    (``returning_change``, in points of share)."""
    totals = records.groupby(["arm", "seed"])["clicks"].sum().unstack("arm")
    last = records[records["day"] == records.groupby("seed")["day"].transform("max")]
    returning = last.groupby(["arm", "seed"])["returning_share"].mean().unstack("arm")
    rows = {}
    for arm in totals.columns:
        mean, half = t_interval((totals[arm] / totals[baseline] - 1).dropna())
        r_mean, r_half = t_interval((returning[arm] - returning[baseline]).dropna())
        rows[arm] = {"clicks_change": mean, "clicks_change_ci95": half, "returning_change": r_mean, "returning_change_ci95": r_half}
    return pd.DataFrame(rows).T


def run(world_dir: Path, config: SimulationConfig) -> tuple[pd.DataFrame, list[float]]:
    records, seconds = [], []
    for seed in config.seeds:
        started = time.perf_counter()
        records.extend(run_seed(world_dir, config, seed, progress=False)["records"])
        seconds.append(time.perf_counter() - started)
        print(f"  seed {seed}: {seconds[-1]:.0f} s", flush=True)
    return pd.DataFrame(records), seconds


def ensure_world(work: Path, config: WorldConfig, name: str) -> tuple[Path, dict]:
    world_dir = work / name
    if not (world_dir / "summary.json").exists():
        generate_world(world_dir, config, progress=False)
    return world_dir, json.loads((world_dir / "summary.json").read_text())


COLUMNS = ["total_clicks_per_user", "total_clicks_per_user_ci95", "clicks_change", "clicks_change_ci95", "ctr", "ctr_ci95",
           "returning_share_last_day", "returning_change", "returning_change_ci95", "diversity", "temporal_diversity", "cold_clicks",
           "regret_clicks"]


def validate(args, shape: dict) -> None:
    """Run GRID against plain two-tower on the validation world and seeds, with the behaviours on (default
    strengths) and off; choose the setting with the largest gain on among those costing <= MAX_COST_OFF off."""
    arms = (BASELINE, *GRID, "oracle")
    config = SimulationConfig.with_variants(GRID, warmup_days=args.warmup, days=args.days, seeds=VALIDATION_SEEDS, arms=arms)
    started = time.perf_counter()
    result: dict = {"grid": GRID, "seeds": list(VALIDATION_SEEDS), "world_seed": VALIDATION_WORLD, "runs": {}}
    for behaviours in ("on", "off"):
        world = world_config(behaviours, "default", **{**shape, "seed": VALIDATION_WORLD})
        world_dir, summary = ensure_world(args.work, world, f"validation-{behaviours}-{shape['items']}-{shape['users']}-{shape['days']}")
        print(f"validation, behaviours {behaviours}: logging CTR {summary['ctr']:.4f}")
        frame, seconds = run(world_dir, config)
        table = summarise(frame).join(paired_change(frame))
        print(table[COLUMNS].astype(float).to_string(float_format=lambda v: f"{v:.4f}"))
        result["runs"][behaviours] = {"summary": table.astype(float).reset_index(names="arm").to_dict(orient="records"),
                                      "seconds": seconds}
    on = {r["arm"]: r for r in result["runs"]["on"]["summary"]}
    off = {r["arm"]: r for r in result["runs"]["off"]["summary"]}
    eligible = [name for name in GRID if off[name]["clicks_change"] >= -MAX_COST_OFF]
    chosen = max(eligible, key=lambda name: on[name]["clicks_change"]) if eligible else None
    result["chosen"] = {"name": chosen, "options": GRID.get(chosen), "rule": f"largest clicks_change with behaviours on among "
                        f"settings whose clicks_change off is >= -{MAX_COST_OFF:.0%}"}
    result["seconds"] = time.perf_counter() - started
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()}
    print(f"\nchosen on validation: {chosen} {GRID.get(chosen)}")
    write_json(result, Path("benchmarks/results/longrun_validation.json"))


def report(args, shape: dict) -> None:
    name = "longrun" + ("_off" if args.behaviours == "off" else "" if args.strength == "default" else f"_{args.strength}")
    out = args.out or Path("benchmarks/results") / f"{name}.json"
    world = world_config(args.behaviours, args.strength, **{**shape, "seed": REPORT_WORLD})
    label = "off" if args.behaviours == "off" else args.strength
    started = time.perf_counter()
    world_dir, summary = ensure_world(args.work, world, f"world-{label}-{shape['items']}-{shape['users']}-{shape['days']}")
    print(f"world: {shape['items']} items, {shape['users']} users, {shape['days']} days, behaviours {world.behaviours}; "
          f"logging policy CTR {summary['ctr']:.4f} ({summary['clicks']} clicks / {summary['impressions']} impressions)")
    arms = tuple(args.arms) if args.arms else ARMS
    config = SimulationConfig.with_variants(REPORT_VARIANTS, warmup_days=args.warmup, days=args.days, seeds=tuple(range(args.seeds)),
                                            arms=arms)
    simulate_started = time.perf_counter()
    frame, seconds = run(world_dir, config)
    simulated = time.perf_counter() - simulate_started
    table = summarise(frame).join(paired_change(frame))
    print()
    print(table[COLUMNS].astype(float).to_string(float_format=lambda v: f"{v:.4f}"))
    daily = frame.pivot_table(index="day", columns="arm", values="clicks_per_eligible_user", aggfunc="mean")[list(arms)]
    print("\nclicks per eligible user by day (mean over seeds):")
    print(daily.iloc[:: max(1, len(daily) // 7)].to_string(float_format=lambda v: f"{v:.3f}"))
    elapsed = time.perf_counter() - started
    print(f"\n{len(arms)} arms x {args.days} days x {len(config.seeds)} seeds: {simulated:.0f} s simulated "
          f"({elapsed:.0f} s with the world)")
    result = {
        "world": {**dataclasses.asdict(world), "logging_ctr": summary["ctr"], "logged_clicks": summary["clicks"],
                  "logged_impressions": summary["impressions"], "strength": label},
        "simulation": dataclasses.asdict(config),
        "summary": table.astype(float).reset_index(names="arm").to_dict(orient="records"),
        "clicks_per_eligible_user_by_day": {str(day): row for day, row in daily.to_dict(orient="index").items()},
        "seconds": elapsed, "simulation_seconds": simulated, "seconds_per_seed": seconds,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(result, out)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--days", type=int, default=28, help="simulated days")
    parser.add_argument("--warmup", type=int, default=14, help="logged days every arm starts from")
    parser.add_argument("--seeds", type=int, default=5, help="report seeds (0, 1, ...)")
    parser.add_argument("--behaviours", choices=("on", "off"), default="on")
    parser.add_argument("--strength", choices=tuple(STRENGTHS), default="default", help="satiation and boredom strength")
    parser.add_argument("--arms", nargs="+", default=None, help=f"default: {' '.join(ARMS)}")
    parser.add_argument("--validate", action="store_true", help="choose the setting on the validation world and seeds")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/longrun"))
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/longrun[_weak|_strong|_off].json")
    args = parser.parse_args()
    shape = dict(items=args.items, users=args.users, days=args.warmup + args.days, images=False)
    (validate if args.validate else report)(args, shape)


if __name__ == "__main__":
    main()
