"""Offline diversity/accuracy trade-off of the re-ranker on the held-out period.

For each evaluable (warm) user: the model's top candidates, re-ranked to K by MMR or DPP (whole-slate
or sliding-window) at several trade-offs, scored by recall@K on the test clicks and by intra-list
diversity (pretrained image vectors) of the first screen (the top ``diversity_k``) and of the whole slate.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.serving.rerank import DPP, DPP_WINDOW, MMR, Candidates
from vistaste.towers import metrics
from vistaste.towers.evaluation import build_slices
from vistaste.towers.training import TrainedTwoTower, prepare


RERANKERS = {"mmr": MMR, "dpp": DPP, f"dpp-window{DPP_WINDOW}": functools.partial(DPP, window=DPP_WINDOW)}


def rerank_tradeoff(model_dir: str | Path, dataset_dir: str | Path, trade_offs=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3), methods=tuple(RERANKERS),
                    k: int = 50, n_candidates: int = 200, max_users: int = 400, diversity_k: int = 10, space: str = "image",
                    period: str = "test") -> pd.DataFrame:
    """Rows: method, trade_off, recall@k, diversity@diversity_k (first screen), diversity@k (whole slate),
    and each relative to no re-ranking.

    ``period="validation"`` scores the clicks of the validation days instead (histories from training
    days only), so a setting can be chosen there and reported on the untouched test days.
    """
    if period not in ("test", "validation"):
        raise ValueError(f"period must be test or validation, got {period!r}")
    trained = TrainedTwoTower.load(model_dir)
    split, raw_table, _, _ = prepare(Path(dataset_dir), trained.config)
    if period == "validation":
        split = dataclasses.replace(split, validation=split.validation.iloc[:0], test=split.validation)
    warm = build_slices(split, raw_table, trained.config.history_length)[0]
    users = slice(0, max_users)
    user_vectors = trained.user_vectors(warm.user_ids[users], warm.history_rows[users])
    item_vectors = trained.item_vectors()
    scores = metrics.exclude(user_vectors @ item_vectors.T, warm.history_rows[users])
    candidates = metrics.top_k(scores, n_candidates)
    # Diversify over the pretrained image vectors ("image": vary how the taste looks) or the model's
    # item vectors ("model": vary the taste itself).
    diversity_space = raw_table.vectors if space == "image" else item_vectors
    relevant = warm.relevant[users]
    rows = []
    for method in methods:
        for trade_off in trade_offs:
            tops = []
            for u, cand in enumerate(candidates):
                slate = RERANKERS[method](k, trade_off)(Candidates(cand, diversity_space[cand], scores[u, cand]))
                top = np.full(k, -1)
                top[: len(slate.ids)] = slate.ids
                tops.append(top)
            top = np.array(tops)
            filled = np.where(top >= 0, top, 0)
            rows.append({"method": method, "trade_off": trade_off, f"recall@{k}": metrics.recall(top, relevant, k),
                         f"diversity@{diversity_k}": metrics.intra_list_diversity(filled, raw_table.vectors, diversity_k),
                         f"diversity@{k}": metrics.intra_list_diversity(filled, raw_table.vectors, k)})
    frame = pd.DataFrame(rows)
    baseline = frame[frame["trade_off"] == 1.0].set_index("method")
    for column, change in ((f"recall@{k}", "recall_change"), (f"diversity@{diversity_k}", "diversity_change"), (f"diversity@{k}", "slate_diversity_change")):
        frame[change] = frame[column] / frame["method"].map(baseline[column]) - 1
    return frame


def plot_tradeoff(frame: pd.DataFrame, path: str | Path, k: int = 50, diversity_k: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in (f"diversity@{diversity_k}", f"diversity@{k}") if c in frame]
    fig, axes = plt.subplots(1, len(columns), figsize=(6 * len(columns), 4.5), sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        for method, block in frame.groupby("method"):
            ax.plot(block[column], block[f"recall@{k}"], marker="o", label=method.upper())
            for trade_off, x, y in zip(block["trade_off"], block[column], block[f"recall@{k}"]):
                ax.annotate(f"{trade_off:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        screen = "first screen" if column.endswith(f"@{diversity_k}") else "whole slate"
        ax.set(xlabel=f"intra-list {column} ({screen})", ylabel=f"recall@{k}", title="re-ranking trade-off (labels: λ / θ)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
