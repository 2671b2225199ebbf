"""The simulator's arms: their names, what the two-tower arms ask of the serving path, each arm's own log
and users (:class:`Arm`), and how the baselines (most popular, pretrained-vector kNN) and the oracle rank.
Two-tower arms are served by :class:`vistaste.bench.arm_server.ArmServer`; the run loop is
:func:`vistaste.bench.simulate.run_seed`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from vistaste.bench.sim_config import ARMS, RERANK  # noqa: F401  (re-exported)
from vistaste.bench.users import UserState
from vistaste.data.seen import SeenPolicy
from vistaste.towers.features import PAD, ItemTable
from vistaste.towers.trained import TrainedTwoTower


class Arm:
    """One policy with its own log, its users' click histories and (for two-tower arms) its own model."""

    def __init__(self, name: str, base_logs: pd.DataFrame, n_users: int, users: UserState):
        self.name = name
        self.logs = [base_logs]
        self.clicked: list[list[int]] = [[] for _ in range(n_users)]
        self.model: TrainedTwoTower | None = None
        self.users = users  # this arm's users: how they react to what it serves
        self.last_slate: dict[int, np.ndarray] = {}  # user -> table rows served on their last visit (diversity over time)
        self.click_log: list[tuple[int, int, pd.Timestamp]] = []  # (day, item row, time) of this arm's clicks: popularity, trends

    def all_logs(self) -> pd.DataFrame:
        if len(self.logs) > 1:
            self.logs = [pd.concat(self.logs, ignore_index=True)]
        return self.logs[0]


def top_k_excluding(scores: np.ndarray, exclude: list[np.ndarray], k: int) -> np.ndarray:
    scores = scores.astype(np.float64).copy()
    for u, rows in enumerate(exclude):
        if len(rows):
            scores[u, rows] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.where(np.take_along_axis(scores, order, axis=1) > -np.inf, order, PAD)


def seen_rows(logs: pd.DataFrame, active: np.ndarray, truth, table: ItemTable, now: pd.Timestamp, policy: SeenPolicy) -> list[np.ndarray]:
    """What the seen-item policy (the one `vistaste serve` applies) hides from each active user now."""
    users = np.asarray(truth.user_ids)[active]
    mine = logs[logs["user_id"].isin(set(users))]
    hidden = policy.seen_by_user(mine.assign(row=table.rows(mine["item_id"].to_numpy(), unknown="pad")), now, value="row")
    empty = np.zeros(0, np.int64)
    return [hidden.get(u, empty) for u in users]


def serve_baseline(name, arm, active, available, table, raw_unit, true_logits, exclude, config, now, day, truth) -> np.ndarray:
    """Slates [active, k] of table rows (PAD where an arm has fewer items) for a baseline arm or the oracle on
    one day (two-tower arms are served by :class:`ArmServer`, the serving path)."""
    k = config.slate_size
    mask = np.full(len(table), -np.inf)
    mask[available] = 0.0
    if name == "oracle":
        return top_k_excluding(true_logits + mask, exclude, k)
    recent = np.array([r for d, r, _ in arm.click_log if d >= day - 7 and r != PAD], dtype=np.int64)
    popularity = np.bincount(recent, minlength=len(table)).astype(float)
    if name == "most-popular":
        return top_k_excluding(np.tile(popularity + mask, (len(active), 1)), exclude, k)
    history = np.full((len(active), 20), PAD)
    for a, user in enumerate(active):
        clicked = arm.clicked[user][-20:]
        if clicked:
            history[a, -len(clicked):] = clicked
    if name == "pretrained-kNN":
        has = history != PAD
        profile = (raw_unit[np.where(has, history, 0)] * has[..., None]).sum(axis=1)
        scores = profile @ raw_unit.T + mask
        empty = ~has.any(axis=1)
        scores[empty] = popularity + mask
        return top_k_excluding(scores, exclude, k)
    raise ValueError(f"unknown arm {name!r}")

