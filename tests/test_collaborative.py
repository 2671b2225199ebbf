"""The collaborative (ALS) term beside the towers: its fold-in against the least-squares definition, and
the model's vectors carrying it."""
import numpy as np
import pandas as pd
import pytest

from vistaste.towers.collaborative import Collaborative, content, spread_ratio
from vistaste.towers.features import PAD, ItemTable


def _reference_fold_in(y: np.ndarray, consumed: list[int], regularization: float, alpha: float) -> np.ndarray:
    """By definition (Hu, Koren & Volinsky 2008): x minimises sum_i c_i (p_i - x.y_i)^2 + lambda |x|^2 over
    every item, p_i = 1 and c_i = 1 + alpha for consumed items, 0 and 1 for the rest; solved as one
    weighted least-squares problem with numpy's lstsq on the stacked ridge system."""
    n, f = y.shape
    p = np.zeros(n)
    p[consumed] = 1.0
    c = np.ones(n)
    c[consumed] = 1.0 + alpha
    a = np.vstack([np.sqrt(c)[:, None] * y, np.sqrt(regularization) * np.eye(f)])
    b = np.concatenate([np.sqrt(c) * p, np.zeros(f)])
    return np.linalg.lstsq(a, b, rcond=None)[0]


def test_fold_in_is_the_weighted_least_squares_solution():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 4)).astype(np.float32)
    term = Collaborative(np.array([f"i{j}" for j in range(30)]), y, regularization=0.3, alpha=2.0, gamma=1.0)
    consumed = [np.array([3, 7, 7, PAD, 11]), np.array([PAD, PAD]), np.array([0])]
    got = term.user_factors(consumed)
    np.testing.assert_allclose(got[0], _reference_fold_in(y.astype(np.float64), [3, 7, 11], 0.3, 2.0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], np.zeros(4))  # nothing consumed: no collaborative signal
    np.testing.assert_allclose(got[2], _reference_fold_in(y.astype(np.float64), [0], 0.3, 2.0), rtol=1e-5, atol=1e-6)


def test_users_folded_into_fitted_factors_prefer_unseen_items_of_their_own_taste():
    """ALS fitted with implicit on two groups of users with disjoint tastes; each user folded in from their own items."""
    rng = np.random.default_rng(1)
    n_items, n_users = 40, 60
    ids = np.array([f"i{j}" for j in range(n_items)], dtype=object)
    table = ItemTable(ids, np.eye(n_items, dtype=np.float32), np.zeros((n_items, 0), np.float32), [])
    rows = [rng.choice(n_items // 2, 6, replace=False) + (u % 2) * (n_items // 2) for u in range(n_users)]  # two tastes
    positives = pd.DataFrame({"user_id": np.repeat([f"u{u}" for u in range(n_users)], 6), "row": np.concatenate(rows),
                              "timestamp": pd.Timestamp("2026-01-01", tz="UTC")})
    term = Collaborative.fit(positives, table, gamma=1.0, factors=8, regularization=0.1)
    folded = term.user_factors(rows)
    scores = folded @ term.item_factors.T
    # Each user's unseen items of their own taste outrank the other taste's.
    for u in range(n_users):
        own = np.arange(n_items // 2) + (u % 2) * (n_items // 2)
        other = np.setdiff1d(np.arange(n_items), own)
        unseen = np.setdiff1d(own, rows[u])
        assert scores[u, unseen].mean() > scores[u, other].mean()


def test_factors_follow_item_ids_and_survive_saving(tmp_path):
    y = np.arange(6, dtype=np.float32).reshape(3, 2)
    term = Collaborative(np.array(["a", "b", "c"]), y, 0.1, 1.0, 0.5)
    np.testing.assert_array_equal(term.item_factors_for(["c", "new", "a"]), [[4, 5], [0, 0], [0, 1]])
    aligned = term.aligned(["c", "a"])
    np.testing.assert_array_equal(aligned.user_factors([np.array([0])]), term.user_factors([np.array([2])]))
    term.save(tmp_path / "collaborative.npz")
    loaded = Collaborative.load(tmp_path / "collaborative.npz")
    assert (loaded.regularization, loaded.alpha, loaded.gamma) == (0.1, 1.0, 0.5)
    np.testing.assert_array_equal(loaded.item_factors, y)
    assert list(loaded.item_ids) == ["a", "b", "c"]


def test_spread_ratio_by_hand():
    towers = np.array([[0.0, 2.0, -np.inf], [2.0, 0.0, 4.0]])
    als = np.array([[0.0, 1.0, 5.0], [1.0, 0.0, -np.inf]])
    # finite in both: towers (0, 2, 2, 0) std 1; als (0, 1, 1, 0) std 0.5
    assert spread_ratio(towers, als) == pytest.approx(2.0)


def test_items_without_clicks_get_factors_from_their_content():
    """Two tastes told apart by content; an item nobody clicked gets the factors of its look, so users of
    that taste rank it above the other taste's (a zero vector would sit between them)."""
    rng = np.random.default_rng(2)
    n_items, n_users = 41, 60
    taste = np.arange(n_items) % 2
    vectors = np.eye(2, dtype=np.float32)[taste] + 0.01 * rng.normal(size=(n_items, 2)).astype(np.float32)
    table = ItemTable(np.array([f"i{j}" for j in range(n_items)], dtype=object), vectors, np.zeros((n_items, 0), np.float32), [])
    cold = n_items - 1  # taste 0, never clicked
    rows = [rng.choice(np.flatnonzero((taste == u % 2) & (np.arange(n_items) != cold)), 6, replace=False) for u in range(n_users)]
    positives = pd.DataFrame({"user_id": np.repeat([f"u{u}" for u in range(n_users)], 6), "row": np.concatenate(rows),
                              "timestamp": pd.Timestamp("2026-01-01", tz="UTC")})
    term = Collaborative.fit(positives, table, factors=4)
    scores = term.user_factors(rows) @ term.item_factors.T
    assert np.abs(term.item_factors[cold]).max() > 0
    assert scores[0::2, cold].mean() > scores[1::2, cold].mean()  # taste-0 users like it more than taste-1 users
    # A new item (not in the fitted table) is mapped the same way from the content it arrives with.
    np.testing.assert_allclose(term.item_factors_for(["brand-new"], content(table)[[cold]])[0], term.item_factors[cold], atol=1e-5)
