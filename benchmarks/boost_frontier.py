"""What the trend boost trades: test nDCG@10 against coverage@10 as its weight varies, on MovieLens-100K's
global temporal split (the models `benchmarks/real_data.py` trained; run that first).

    .venv/bin/python benchmarks/boost_frontier.py

For reading only, never for choosing: training picks the weight on validation (``towers/trend_boost.py``).
The weight is given as a multiple of the spread (std) of the model's candidate scores, with the half-life
and tag share each model chose. Two more levers, tried as ways to keep breadth with the boost:

- ``pool``: lift only each user's best N unseen items instead of ``CANDIDATES`` (200);
- ``exposure``: an aggregate-diversity penalty (Adomavicius & Kwon 2012): score -= lam * spread * the
  share of users whose boosted top 10 holds the item, so items shown to everyone give way;
- ``slots``: only the first S places of the top 10 come from the boosted order, the rest from the
  towers' own order (a slate with a few "trending for you" places and the rest personal).

Writes ``benchmarks/results/boost_frontier.json``.
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
POOLS = (20, 50, 100, trend_boost.CANDIDATES)
EXPOSURE = (0.0, 1.0, 2.0, 4.0)
SLOTS = (10, 6, 4)
TARGET_NDCG = 0.196  # 1.1x evaluate's tuned ALS on this split (0.178, README)


def mixed_top(boosted_top: np.ndarray, own_top: np.ndarray, slots: int, k: int = 10) -> np.ndarray:
    """The first ``slots`` places from ``boosted_top``, then ``own_top``'s items not already shown, to ``k``."""
    out = np.empty((len(boosted_top), k), dtype=boosted_top.dtype)
    for u, (lifted, own) in enumerate(zip(boosted_top, own_top)):
        head = list(lifted[:slots])
        out[u] = (head + [i for i in own if i not in head])[:k]
    return out


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
        for pool in POOLS:
            ranked = trend_boost.boosted(base, warm.exclude, available, trend, multiple * spread, pool)
            shown = np.bincount(metrics.top_k(ranked, 10, ties).ravel(), minlength=len(table)) / len(warm.user_ids)
            for lam in EXPOSURE:
                for slots in SLOTS if lam == 0 else SLOTS[:1]:
                    top = metrics.top_k(ranked - lam * spread * shown, 10, ties)
                    top = top if slots == 10 else mixed_top(top, metrics.top_k(base, 20, ties), slots)
                    coverage = metrics.coverage(top, len(table), 10)
                    chosen = (bool(np.isclose(multiple * spread, setting.weight, rtol=0.01)) and pool == trend_boost.CANDIDATES
                              and lam == 0 and slots == 10)
                    rows.append({"multiple": multiple, "pool": pool, "exposure": lam, "slots": slots,
                                 "ndcg@10": metrics.ndcg(top, warm.relevant, 10), "coverage@10": coverage,
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
    plain = table[(table["pool"] == trend_boost.CANDIDATES) & (table["exposure"] == 0) & (table["slots"] == 10)]
    mean = plain.groupby("multiple")[["ndcg@10", "coverage@10", "coverage_vs_popular"]].agg(["mean", "std"])
    print(f"MovieLens-100K, temporal 20%, warm users ({results[0]['users']}); most-popular nDCG@10 "
          f"{np.mean([r['popular_ndcg@10'] for r in results]):.4f}, coverage@10 {np.mean([r['popular_coverage@10'] for r in results]):.4f}")
    print(mean.round(4).to_markdown())
    levers = table.groupby(["pool", "exposure", "slots", "multiple"])[["ndcg@10", "coverage_vs_popular"]].mean()
    both = levers[(levers["ndcg@10"] >= TARGET_NDCG) & (levers["coverage_vs_popular"] >= 3.0)]
    print(f"pool x exposure x slots x multiple, mean over models: {len(levers)} settings; with nDCG@10 >= {TARGET_NDCG} (1.1x tuned ALS) "
          f"and coverage >= 3x most-popular's: {len(both)}")
    print(levers[levers["coverage_vs_popular"] >= 2.5].sort_values("ndcg@10", ascending=False).head(8).round(4).to_markdown())
    print("chosen on validation: " + ", ".join(f"{r['model']} x{[x['multiple'] for x in r['rows'] if x['chosen']]}" for r in results))
    write_json({"results": results}, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
