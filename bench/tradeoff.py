"""Offline diversity/accuracy trade-off of the re-ranker on the held-out period.

For each evaluable (warm) user: the model's top candidates, re-ranked to K by MMR or DPP (whole-slate,
sliding-window, cosine or Gaussian kernel) at several trade-offs. The first screen (the top
``diversity_k``) and the whole slate are each scored by recall on the held-out clicks and by intra-list
diversity over the pretrained image vectors, and each setting's diversity gain as a share of the gap to
slates drawn at random. Offline, every diversity costs recall; the online simulator
(benchmarks/longrun.py) shows where it pays: docs/diversity.md sets the two side by side.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.serving.rerank import DPP_WINDOW, Pipeline
from vistaste.serving.rerank_stages import DPP, MMR, Candidates, TopK
from vistaste.towers import metrics
from vistaste.towers.config import CANDIDATES
from vistaste.towers.slices import build_slices, validation_split
from vistaste.towers.training import TrainedTwoTower, prepare

RERANKERS = {
    "mmr": MMR,
    "dpp": DPP,
    f"dpp-window{DPP_WINDOW}": functools.partial(DPP, window=DPP_WINDOW),
    f"dpp-window{DPP_WINDOW}-rbf0.5": functools.partial(DPP, window=DPP_WINDOW, bandwidth=0.5),
    # Only re-orders the top k: recall@k cannot change, so it shows why first-screen diversity must be
    # set against first-screen recall.
    f"dpp-window{DPP_WINDOW}-reorder-top-k": lambda k, trade_off: Pipeline([TopK(k), DPP(k, trade_off, window=DPP_WINDOW)]),
}


def paired_change_interval(recall: np.ndarray, baseline: np.ndarray, resamples: int = 1000, level: float = 0.9,
                           seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval (resampling users, both rankings together) of mean(recall) / mean(baseline) − 1.

    A few hundred users leave a few points of noise in a recall change; the interval says how many.
    """
    rows = np.random.default_rng(seed).integers(0, len(recall), (resamples, len(recall)))
    change = recall[rows].mean(axis=1) / np.maximum(baseline[rows].mean(axis=1), 1e-12) - 1
    low, high = np.quantile(change, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def rerank_tradeoff(model_dir: str | Path, dataset_dir: str | Path, trade_offs=(1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3),
                    methods=tuple(RERANKERS), k: int = 50, n_candidates: int = CANDIDATES, max_users: int | None = None,
                    diversity_k: int = 10, space: str = "image", period: str = "test") -> pd.DataFrame:
    """Rows: method, trade_off, and for the first screen (the top ``diversity_k``) and the whole slate
    (``k``) the recall and intra-list diversity of *that same list*, each relative to no re-ranking, with
    a 90% bootstrap interval of each recall change.

    Diversity of one list is only ever set against recall of the same list: recall@k is blind to order,
    so re-ordering the top k alone buys first-screen diversity at no recall@k cost while the first
    screen loses relevant items (recall@diversity_k shows it).

    Every evaluable (warm) user is scored unless ``max_users`` caps them. ``period="validation"`` scores
    the clicks of the validation days instead (histories from training days only), so a setting can be
    chosen there and reported on the untouched test days.
    """
    if period not in ("test", "validation"):
        raise ValueError(f"period must be test or validation, got {period!r}")
    trained = TrainedTwoTower.load(model_dir)
    split, raw_table, _, _ = prepare(Path(dataset_dir), trained.config)
    if period == "validation":
        split = validation_split(split)
    warm = build_slices(split, raw_table, trained.config.history_length)[0]
    users = slice(0, max_users)  # None: all
    user_vectors = trained.user_vectors(warm.user_ids[users], warm.history_rows[users], warm.histories[users])
    item_vectors = trained.item_vectors()
    scores = metrics.exclude(user_vectors @ item_vectors.T, warm.exclude[users])
    candidates = metrics.top_k(scores, n_candidates)
    # Diversify over the pretrained image vectors ("image": vary how the taste looks) or the model's
    # item vectors ("model": vary the taste itself).
    diversity_space = raw_table.vectors if space == "image" else item_vectors
    relevant = warm.relevant[users]
    lists = {"screen": diversity_k, "slate": k}
    relevance_order = {name: metrics.recall_per_user(candidates, relevant, depth) for name, depth in lists.items()}
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
            row = {"method": method, "trade_off": trade_off, "users": len(top)}
            for name, depth in lists.items():
                per_user = metrics.recall_per_user(top, relevant, depth)
                row[f"recall@{depth}"] = float(per_user.mean())
                row[f"diversity@{depth}"] = metrics.intra_list_diversity(filled, raw_table.vectors, depth)
                low, high = paired_change_interval(per_user, relevance_order[name])
                row[f"{name}_recall_change_low"], row[f"{name}_recall_change_high"] = low, high
            rows.append(row)
    frame = pd.DataFrame(rows)
    # Reference: slates drawn at random from the catalog, as diverse as the catalog is, with no taste at all.
    rng = np.random.default_rng(0)
    random_slates = np.array([rng.choice(len(raw_table), min(k, len(raw_table)), replace=False) for _ in range(1000)])
    for depth in lists.values():
        frame[f"random_diversity@{depth}"] = metrics.intra_list_diversity(random_slates, raw_table.vectors, depth)
    baseline = frame[frame["trade_off"] == 1.0].set_index("method")
    for name, depth in lists.items():
        for column, change in ((f"recall@{depth}", f"{name}_recall_change"), (f"diversity@{depth}", f"{name}_diversity_change")):
            frame[change] = frame[column] / frame["method"].map(baseline[column]) - 1
        # How far each setting goes from the model's order toward slates drawn at random (0: none, 1: as diverse
        # as random slates): offline, a diversity gain only means something against that gap.
        plain = frame["method"].map(baseline[f"diversity@{depth}"])
        frame[f"{name}_random_gap_share"] = (frame[f"diversity@{depth}"] - plain) / (frame[f"random_diversity@{depth}"] - plain)
    return frame


def plot_tradeoff(frame: pd.DataFrame, path: str | Path, k: int = 50, diversity_k: int = 10,
                  target: tuple[float, float] = (0.25, 0.05)) -> None:
    """Recall against diversity of the same list: the first screen (left) and the whole slate (right).

    The shaded corner is ``target`` (diversity gain, largest recall loss) relative to no re-ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(depth, label) for depth, label in ((diversity_k, "first screen"), (k, "whole slate")) if f"diversity@{depth}" in frame]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    plain = frame[frame["trade_off"] == 1.0].iloc[0]  # no re-ranking
    gain, loss = target
    for ax, (depth, label) in zip(axes[0], panels):
        for method, block in frame.groupby("method"):
            ax.plot(block[f"diversity@{depth}"], block[f"recall@{depth}"], marker="o", label=method.upper())
            for trade_off, x, y in zip(block["trade_off"], block[f"diversity@{depth}"], block[f"recall@{depth}"]):
                ax.annotate(f"{trade_off:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if f"random_diversity@{depth}" in frame:
            ax.axvline(plain[f"random_diversity@{depth}"], color="grey", linestyle="--", label="random slates from the catalog")
        ax.fill_between([plain[f"diversity@{depth}"] * (1 + gain), frame[f"diversity@{depth}"].max() * 1.02],
                        plain[f"recall@{depth}"] * (1 - loss), plain[f"recall@{depth}"] * 1.02, color="green", alpha=0.12,
                        label=f"target: +{gain:.0%} diversity, ≤{loss:.0%} recall loss")
        ax.set(xlabel=f"intra-list diversity@{depth} ({label})", ylabel=f"recall@{depth}",
               title=f"{label}: re-ranking trade-off (labels: λ / θ)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
