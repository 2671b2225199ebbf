"""What the trend boost trades: test nDCG@10 against coverage@10 as its weight varies, on MovieLens-100K's
global temporal split (the models `benchmarks/real_data.py` trained; run that first).

    .venv/bin/python benchmarks/boost_frontier.py

For reading only, never for choosing: training picks the weight on validation (``towers/trend_boost.py``).
The weight is given as a multiple of the spread (std) of the model's candidate scores, with the half-life
and tag share each model chose. Writes ``benchmarks/results/boost_frontier.json``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.data.io import write_json
from vistaste.towers import metrics, trend_boost
from vistaste.towers.evaluation import available_items
from vistaste.towers.features import positives
from vistaste.towers.slices import build_slices, positive_rows
from vistaste.towers.training import TrainedTwoTower, prepare

HERE = Path(__file__).resolve().parent
MULTIPLES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0, 16.0)


def frontier(model_dir: Path, data: Path) -> dict:
    trained = TrainedTwoTower.load(model_dir)
    split, table, _, _ = prepare(data, trained.config)
    warm = build_slices(split, table, trained.config.history_length)[0]
    available = available_items(table, split.end)
    clicks = positives(pd.concat([split.train, split.validation]))
    base = metrics.exclude(trained.user_vectors(warm.user_ids, warm.history_rows) @ trained.item_vectors().T, warm.exclude, available)
    spread, ties, setting = trend_boost.score_spread(base), metrics.tie_break(len(table), 0), trained.trend
    trend = trend_boost.trend_matrix(clicks, warm.cuts, table, setting.half_life_hours, setting.tag_share)
    popularity = np.bincount(positive_rows(split.train, table)["row"].to_numpy(), minlength=len(table)).astype(float)
    popular_top = metrics.top_k(metrics.exclude(np.broadcast_to(popularity, base.shape).copy(), warm.exclude, available), 10, ties)
    popular_coverage = metrics.coverage(popular_top, len(table), 10)
    rows = []
    for multiple in sorted({*MULTIPLES, round(setting.weight / spread, 2)}):
        top = metrics.top_k(trend_boost.boosted(base, warm.exclude, available, trend, multiple * spread), 10, ties)
        coverage = metrics.coverage(top, len(table), 10)
        chosen = bool(np.isclose(multiple * spread, setting.weight, rtol=0.01))
        rows.append({"multiple": multiple, "ndcg@10": metrics.ndcg(top, warm.relevant, 10), "coverage@10": coverage,
                     "coverage_vs_popular": coverage / popular_coverage, "chosen": chosen})
    return {"model": model_dir.name, "users": len(warm.user_ids), "setting": setting.to_dict(), "score_spread": spread,
            "popular_ndcg@10": metrics.ndcg(popular_top, warm.relevant, 10), "popular_coverage@10": popular_coverage, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / ".work")
    parser.add_argument("--models", nargs="+", default=[f"fraction-{s}-logq" for s in range(3)])
    parser.add_argument("--out", type=Path, default=HERE / "results" / "boost_frontier.json")
    args = parser.parse_args()
    results = [frontier(args.work / "models" / name, args.work / "ml-100k") for name in args.models]
    table = pd.DataFrame([{"model": r["model"], **row} for r in results for row in r["rows"]])
    mean = table.groupby("multiple")[["ndcg@10", "coverage@10", "coverage_vs_popular"]].agg(["mean", "std"])
    print(f"MovieLens-100K, temporal 20%, warm users ({results[0]['users']}); most-popular nDCG@10 "
          f"{np.mean([r['popular_ndcg@10'] for r in results]):.4f}, coverage@10 {np.mean([r['popular_coverage@10'] for r in results]):.4f}")
    print(mean.round(4).to_markdown())
    print("chosen on validation: " + ", ".join(f"{r['model']} x{[x['multiple'] for x in r['rows'] if x['chosen']]}" for r in results))
    write_json({"results": results}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
