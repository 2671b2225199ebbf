"""`vistaste evaluate`: the held-out later period, the model beside baselines, always on the same split.

Methods: random, most-popular (last 7 days before the test period), pretrained-kNN (mean of the
user's clicked items' pretrained vectors -> nearest items: off-the-shelf visual similarity), one or
more trained two-tower models, and on the built-in world an oracle ranking by true click probability.
Slices: warm users (history before the test period), new users (no history: their first test clicks
are the history, the rest is scored), cold items (relevant items created during the test period).
Items a user already clicked are excluded; only items that exist by the end of the period compete.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from vistaste.data.io import atomic_path, write_json
from vistaste.data.split import TimeSplit
from vistaste.data.vectors import unit_rows
from vistaste.towers import metrics
from vistaste.towers.features import PAD, ItemTable, latest_histories, positives
from vistaste.towers.training import TrainConfig, TrainedTwoTower, prepare

KS = (10, 50, 100)
NEW_USER_HISTORY = 2


@dataclasses.dataclass
class Slice:
    name: str
    user_ids: np.ndarray
    history_rows: np.ndarray
    relevant: list[np.ndarray]


Scorer = Callable[[Slice], np.ndarray]  # -> scores [users, items]


def build_slices(split: TimeSplit, table: ItemTable, history_length: int) -> list[Slice]:
    before = positives(pd.concat([split.train, split.validation]))
    before_rows = table.rows(before["item_id"].to_numpy(), unknown="pad")
    before, before_rows = before[before_rows != PAD], before_rows[before_rows != PAD]
    test = positives(split.test)
    test = test.assign(row=table.rows(test["item_id"].to_numpy(), unknown="pad"))
    test = test[test["row"] != PAD]
    known = set(before["user_id"])
    warm_users = np.array(sorted(set(test["user_id"]) & known), dtype=object)
    warm_hist = latest_histories(before, before_rows, warm_users, history_length)
    by_user = test.groupby("user_id")["row"].apply(lambda s: s.to_numpy())
    # Exclude from relevance what the user already clicked before (those are filtered from rankings).
    warm_rel = [np.setdiff1d(by_user[u], warm_hist[i]) for i, u in enumerate(warm_users)]
    keep = [i for i, rel in enumerate(warm_rel) if len(rel)]  # users who only re-clicked old items have nothing to find
    warm_users, warm_hist, warm_rel = warm_users[keep], warm_hist[keep], [warm_rel[i] for i in keep]
    slices = [Slice("warm users", warm_users, warm_hist, warm_rel)]

    new_ids, new_hist, new_rel = [], [], []
    for user in sorted(set(test["user_id"]) - known):
        rows = by_user[user]
        if len(np.setdiff1d(rows, rows[:NEW_USER_HISTORY])):
            seen = rows[:NEW_USER_HISTORY]
            new_ids.append(user)
            new_hist.append(np.r_[np.full(history_length, PAD), seen][-history_length:])
            new_rel.append(np.setdiff1d(rows[NEW_USER_HISTORY:], seen))
    slices.append(Slice("new users", np.array(new_ids, dtype=object), np.array(new_hist, dtype=np.int64).reshape(-1, history_length), new_rel))

    if table.created_at is not None:
        created = pd.to_datetime(pd.Series(table.created_at), utc=True)
        cold = np.flatnonzero((created >= split.test_start).to_numpy())
        cold_rel = [np.intersect1d(rel, cold) for rel in warm_rel]
        keep = [i for i, rel in enumerate(cold_rel) if len(rel)]
        slices.append(Slice("cold items", warm_users[keep], warm_hist[keep], [cold_rel[i] for i in keep]))
    return [s for s in slices if len(s.user_ids)]


def popularity_counts(split: TimeSplit, table: ItemTable, days: float = 7) -> np.ndarray:
    recent = positives(pd.concat([split.train, split.validation]))
    recent = recent[recent["timestamp"] >= split.test_start - pd.Timedelta(days=days)]
    rows = table.rows(recent["item_id"].to_numpy(), unknown="pad")
    return np.bincount(rows[rows != PAD], minlength=len(table)).astype(np.float64)


def baseline_scorers(split: TimeSplit, raw_table: ItemTable, seed: int = 0) -> dict[str, Scorer]:
    popular = popularity_counts(split, raw_table)
    unit = unit_rows(raw_table.vectors)

    def random_scores(s: Slice) -> np.ndarray:
        return np.random.default_rng(seed).random((len(s.user_ids), len(raw_table)))

    def popular_scores(s: Slice) -> np.ndarray:
        return np.tile(popular, (len(s.user_ids), 1))

    def knn_scores(s: Slice) -> np.ndarray:
        mask = s.history_rows != PAD
        profile = (unit[np.where(mask, s.history_rows, 0)] * mask[..., None]).sum(axis=1)
        scores = profile @ unit.T
        # Users without any history get popularity (a kNN profile needs clicks).
        empty = ~mask.any(axis=1)
        scores[empty] = popular / max(popular.max(), 1.0)
        return scores

    return {"random": random_scores, "most-popular": popular_scores, "pretrained-kNN": knn_scores}


def model_scorer(trained: TrainedTwoTower) -> Scorer:
    items = trained.item_vectors()

    def scores(s: Slice) -> np.ndarray:
        return trained.user_vectors(s.user_ids, s.history_rows) @ items.T

    return scores


def oracle_scorer(truth, table: ItemTable, day: float) -> Scorer:
    items = truth.item_index(table.ids)

    def scores(s: Slice) -> np.ndarray:
        return truth.logits(truth.user_index(s.user_ids), items, day)

    return scores


def evaluate_scorers(scorers: dict[str, Scorer], slices: list[Slice], raw_table: ItemTable, popularity: np.ndarray,
                     available: np.ndarray, ks=KS) -> dict:
    """{slice: {method: {metric: value}}} plus user counts."""
    results = {}
    for s in slices:
        results[s.name] = {"users": len(s.user_ids), "methods": {}}
        for name, scorer in scorers.items():
            top = metrics.top_k(metrics.exclude(scorer(s), s.history_rows, available), max(ks))
            row = {f"recall@{k}": metrics.recall(top, s.relevant, k) for k in ks}
            row.update({f"ndcg@{k}": metrics.ndcg(top, s.relevant, k) for k in ks})
            row["mrr"] = metrics.mrr(top, s.relevant)
            row["coverage@50"] = metrics.coverage(top, int(available.sum()), 50)
            row["diversity@10"] = metrics.intra_list_diversity(top, raw_table.vectors, 10)
            row["novelty@10"] = metrics.novelty(top, popularity, 10)
            results[s.name]["methods"][name] = row
    return results


def evaluate(dataset_dir: str | Path, models: dict[str, str | Path], out_dir: str | Path | None = None, vectors_path=None,
             truth_dir: str | Path | None = None, seed: int = 0) -> dict:
    """Evaluate trained models (name -> directory) beside the baselines on the same time split."""
    dataset_dir = Path(dataset_dir)
    loaded = {name: TrainedTwoTower.load(path) for name, path in models.items()}
    config: TrainConfig = next(iter(loaded.values())).config
    split, raw_table, _, _ = prepare(dataset_dir, config, vectors_path)
    slices = build_slices(split, raw_table, config.history_length)
    scorers = baseline_scorers(split, raw_table, seed)
    for name, trained in loaded.items():
        if list(trained.table.ids) != list(raw_table.ids):
            raise ValueError(f"model {name!r} was trained on a different item table than {dataset_dir} now holds; retrain it")
        scorers[name] = model_scorer(trained)
    truth_dir = Path(truth_dir) if truth_dir else dataset_dir / "ground_truth"
    if (truth_dir / "world.json").exists():
        from vistaste.data.world import START, GroundTruth

        truth = GroundTruth.load(truth_dir)
        mid_day = ((split.test_start - START).total_seconds() + (split.end - split.test_start).total_seconds() / 2) / 86_400
        scorers["oracle"] = oracle_scorer(truth, raw_table, mid_day)
    available = np.ones(len(raw_table), bool)
    if raw_table.created_at is not None:
        created = pd.to_datetime(pd.Series(raw_table.created_at), utc=True)
        available = (created.isna() | (created <= split.end)).to_numpy()
    popularity = np.bincount(raw_table.rows(positives(split.train)["item_id"].to_numpy(), unknown="pad").clip(0), minlength=len(raw_table)).astype(float)
    results = {"split": split.describe(), "slices": evaluate_scorers(scorers, slices, raw_table, popularity, available),
               "test_users_total": int(split.test["user_id"].nunique()), "models": {k: str(v) for k, v in models.items()}}
    if out_dir is not None:
        write_report(results, Path(out_dir), {name: t.history for name, t in loaded.items()})
    return results


TABLE_COLUMNS = ("recall@10", "recall@50", "recall@100", "ndcg@10", "ndcg@50", "mrr", "coverage@50", "diversity@10", "novelty@10")


def results_table(results: dict, slice_name: str, columns=TABLE_COLUMNS) -> pd.DataFrame:
    methods = results["slices"][slice_name]["methods"]
    return pd.DataFrame({m: {c: v[c] for c in columns} for m, v in methods.items()}).T


def write_report(results: dict, out_dir: Path, histories: dict[str, dict]) -> None:
    """report.json, report.md, recall_at_k.png and training_curves.png in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(results, out_dir / "report.json")
    lines = ["# Offline evaluation", "", f"Split: {json.dumps(results['split'])}", ""]
    for name, block in results["slices"].items():
        lines += [f"## {name} ({block['users']} users)", "", results_table(results, name).to_markdown(floatfmt=".4f"), ""]
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines))

    fig, axes = plt.subplots(1, len(results["slices"]), figsize=(5 * len(results["slices"]), 4), squeeze=False)
    for ax, (name, block) in zip(axes[0], results["slices"].items()):
        for method, values in block["methods"].items():
            ax.plot(KS, [values[f"recall@{k}"] for k in KS], marker="o", label=method)
        ax.set(title=f"{name} ({block['users']} users)", xlabel="K", ylabel="recall@K")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "recall_at_k.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, history in histories.items():
        epochs = [e["epoch"] for e in history.get("epochs", [])]
        left.plot(epochs, [e["loss"] for e in history["epochs"]], marker=".", label=name)
        right.plot(epochs, [e["val_recall@50"] for e in history["epochs"]], marker=".", label=name)
    left.set(title="training loss", xlabel="epoch")
    right.set(title="validation recall@50", xlabel="epoch")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "training_curves.png", dpi=110)
    plt.close(fig)
