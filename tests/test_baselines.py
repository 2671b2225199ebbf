"""Baselines against reference answers: hand-computed scores on tiny logs, block-structured logs for
the learned ones, and the closed-form ALS solution for a new user."""
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.exceptions import NotFittedError

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any TensorFlow import)
from vistaste.towers import metrics
from vistaste.towers.baselines import ALS, PARAM_GRIDS, POPULARITY_FALLBACK, ContentKNN, IdTwoTower, ItemKNN, MostPopular, make_baseline
from vistaste.towers.features import ItemTable

T0 = pd.Timestamp("2024-01-01", tz="UTC")
ATOL = 1e-8  # the tie-break adds at most 1e-9 x the row's largest score


def table(n: int, vectors=None, tags=None, ids=None) -> ItemTable:
    ids = np.array([f"i{k}" for k in range(n)]) if ids is None else np.asarray(ids)
    vectors = np.random.default_rng(1).normal(size=(n, 4)).astype(np.float32) if vectors is None else np.asarray(vectors, np.float32)
    tags = np.zeros((n, 0), np.float32) if tags is None else np.asarray(tags, np.float32)
    return ItemTable(ids, vectors, tags, [f"t{k}" for k in range(tags.shape[1])])


def log(events: list[tuple[str, int, pd.Timestamp]]) -> pd.DataFrame:
    frame = pd.DataFrame(events, columns=["user_id", "row", "timestamp"]).astype({"row": np.int64})
    return frame.sort_values("timestamp", kind="stable").reset_index(drop=True)


def block_log(n_users: int, n_items: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """Even users consume only items [0, n/2) (group A), odd users only [n/2, n) (group B)."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    events = []
    for u in range(n_users):
        for k, item in enumerate(rng.choice(half, per_user, replace=False) + (u % 2) * half):
            events.append((f"u{u}", int(item), T0 + pd.Timedelta(minutes=u * per_user + k)))
    return log(events)


def group_of(rows, half: int, extra_a=()):
    """0 for group A (rows below ``half``, plus ``extra_a``), 1 for group B."""
    rows = np.asarray(rows)
    return ((rows >= half) & ~np.isin(rows, extra_a)).astype(int)


def ranked_ids(model, tab: ItemTable, history=()) -> np.ndarray:
    scores = model.score(np.array(["someone"]), [np.asarray(history, np.int64)])[0]
    return tab.ids[np.argsort(-scores, kind="stable")]


# --- most-popular ------------------------------------------------------------------------------------

def popular_log():
    day = pd.Timedelta(days=1)
    return log([("a", 0, T0), ("b", 0, T0 + day), ("a", 0, T0 + 2 * day),  # item 0: 3, all before the window
                ("c", 1, T0 + 7 * day - pd.Timedelta(seconds=1)),           # item 1: one second before the window
                ("a", 2, T0 + 7 * day), ("b", 2, T0 + 9 * day),             # item 2: at the window start, inside
                ("c", 3, T0 + 10 * day)])                                   # item 3: the latest event; item 4: never


def test_most_popular_counts_every_consumption_and_is_the_same_for_every_user():
    model = MostPopular().fit(popular_log(), table(5))
    scores = model.score(np.array(["a", "new"]), [np.array([0, 2]), np.array([], np.int64)])
    assert scores.shape == (2, 5) and scores.dtype == np.float64
    np.testing.assert_array_equal(np.floor(scores), [[3, 1, 2, 1, 0]] * 2)
    np.testing.assert_array_equal(scores[0], scores[1])
    assert model.name == "most-popular"


def test_most_popular_window_counts_only_the_last_days_before_the_latest_event():
    model = MostPopular(window_days=3).fit(popular_log(), table(5))  # window starts at day 7 (inclusive)
    np.testing.assert_array_equal(np.floor(model.score(np.array(["a"]), [np.array([])])), [[0, 0, 2, 1, 0]])
    assert model.name == "most-popular (last 3 days)"
    assert MostPopular(window_days=0.5).name == "most-popular (last 0.5 days)"


def test_ties_are_broken_by_a_fixed_permutation_of_ids_not_by_catalog_order():
    n = 30
    tab = table(n)
    once = log([(f"u{k}", k, T0 + pd.Timedelta(minutes=k)) for k in range(n)])  # every item once: all tied
    ranking = ranked_ids(MostPopular().fit(once, tab), tab)
    order = np.random.default_rng(5).permutation(n)
    moved = table(n, tab.vectors[order], ids=tab.ids[order])
    new_row = np.argsort(order)  # old row -> new row
    moved_log = once.assign(row=new_row[once["row"].to_numpy()])
    np.testing.assert_array_equal(ranked_ids(MostPopular().fit(moved_log, moved), moved), ranking)
    assert not np.array_equal(ranking, tab.ids) and not np.array_equal(ranking, np.sort(tab.ids))
    assert not np.array_equal(ranked_ids(MostPopular(random_state=1).fit(once, tab), tab), ranking)


# --- item-kNN ----------------------------------------------------------------------------------------

KNN_LOG = log([("u0", 0, T0), ("u0", 1, T0), ("u1", 0, T0), ("u1", 1, T0), ("u1", 2, T0), ("u2", 2, T0), ("u2", 3, T0)])
# Users per item n = [2, 2, 2, 1]; co-occurrence co01 = 2 (u0, u1), co02 = co12 = 1 (u1), co23 = 1 (u2).
# shrink = 1: sim01 = 2 / (sqrt(2*2) + 1) = 2/3; sim02 = sim12 = 1 / (2 + 1) = 1/3; sim23 = 1 / (sqrt(2) + 1) = sqrt(2) - 1.
S01, S02, S23 = 2 / 3, 1 / 3, np.sqrt(2) - 1


def test_item_knn_scores_are_sums_of_shrunk_cosine_similarities():
    model = ItemKNN(neighbours=100, shrink=1.0).fit(KNN_LOG, table(4))
    scores = model.score(np.array(["u0", "x", "y"]), [np.array([0]), np.array([0, 3]), np.array([0, 0])])
    np.testing.assert_allclose(scores, [[0, S01, S02, 0],
                                        [0, S01, S02 + S23, 0],      # item 2: sim02 + sim32; items 0 and 3 are not their own neighbours
                                        [0, S01, S02, 0]], atol=ATOL)  # a repeated history item counts once
    assert model.name == "item-kNN"


def test_item_knn_keeps_each_items_top_neighbours_only():
    # neighbours = 1: item 0 keeps 1 (2/3), item 1 keeps 0, item 2 keeps 3 (0.414 > 1/3), item 3 keeps 2.
    model = ItemKNN(neighbours=1, shrink=1.0).fit(KNN_LOG, table(4))
    scores = model.score(np.array(["x", "y"]), [np.array([0, 2]), np.array([3])])
    np.testing.assert_allclose(scores, [[0, S01, 0, S23], [0, 0, S23, 0]], atol=ATOL)


def test_item_knn_empty_history_gets_popularity():
    model = ItemKNN(shrink=1.0).fit(KNN_LOG, table(4))
    scores = model.score(np.array(["new"]), [np.array([], np.int64)])
    np.testing.assert_allclose(scores, POPULARITY_FALLBACK * np.array([[1, 1, 1, 0.5]]), atol=ATOL)  # positives per item: 2, 2, 2, 1


def test_item_knn_is_binary_in_repeated_consumptions():
    repeated = pd.concat([KNN_LOG, KNN_LOG.iloc[[0, 0, 4]]]).sort_values("timestamp", kind="stable")
    once, twice = (ItemKNN(shrink=1.0).fit(frame, table(4)) for frame in (KNN_LOG, repeated))
    np.testing.assert_array_equal(once.similarity_.toarray(), twice.similarity_.toarray())


# --- ALS ---------------------------------------------------------------------------------------------

def test_als_users_rank_their_own_groups_items_first():
    n = 12
    positives = block_log(n_users=20, n_items=n, per_user=4)
    model = ALS(factors=2, regularization=0.1, iterations=10).fit(positives, table(n))  # two blocks: rank 2
    users = np.array([f"u{u}" for u in range(20)])
    seen = [positives.loc[positives["user_id"] == u, "row"].to_numpy() for u in users]
    scores = model.score(users, seen)
    top = metrics.top_k(metrics.exclude(scores, np.array(seen)), 2)  # each user has 2 unseen items in their group
    np.testing.assert_array_equal(group_of(top, n // 2), np.repeat((np.arange(20) % 2)[:, None], 2, axis=1))
    assert model.name == "ALS (implicit)"


def test_als_new_user_is_solved_from_history_and_known_users_keep_fitted_factors():
    n = 12
    positives = block_log(n_users=20, n_items=n, per_user=4)
    model = ALS(factors=2, regularization=0.1, alpha=2.0, iterations=10).fit(positives, table(n))
    history = np.array([0, 1, 1, 2])  # group A, item 1 twice
    scores = model.score(np.array(["new", "u0", "u0"]), [history, history, np.array([], np.int64)])
    top = metrics.top_k(metrics.exclude(scores[:1], history[None, :]), n // 2 - 3)
    assert (group_of(top, n // 2) == 0).all()
    np.testing.assert_array_equal(scores[1], scores[2])  # a known user's history does not change their factors
    # Reference: Hu et al.'s weighted least squares, confidence c = 1 + alpha * count (1 where unseen):
    # x = (Y^T C Y + lambda I)^-1 Y^T C p.
    Y = model.item_factors_.astype(np.float64)
    count = np.bincount(history, minlength=n)
    c = 1 + 2.0 * count
    x = np.linalg.solve(Y.T @ (c[:, None] * Y) + 0.1 * np.eye(2), Y.T @ (c * (count > 0)))
    np.testing.assert_allclose(model.user_factors(np.array(["new"]), [history])[0], x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[0], Y @ x, rtol=1e-4, atol=1e-5)


def test_als_is_deterministic_for_a_fixed_random_state():
    positives = block_log(n_users=20, n_items=12, per_user=4)
    users, histories = np.array(["u0", "u1", "new"]), [np.array([0]), np.array([]), np.array([0, 1])]
    first, second, other = (ALS(factors=8, iterations=5, random_state=r).fit(positives, table(12)).score(users, histories)
                            for r in (3, 3, 4))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_als_unknown_user_without_history_gets_popularity():
    positives = block_log(n_users=20, n_items=12, per_user=4)
    model = ALS(factors=8, iterations=5).fit(positives, table(12))
    popularity = np.bincount(positives["row"], minlength=12)
    scores = model.score(np.array(["new"]), [np.array([], np.int64)])[0]
    np.testing.assert_allclose(scores, POPULARITY_FALLBACK * popularity / popularity.max(), atol=ATOL)


# --- content-kNN -------------------------------------------------------------------------------------

CONTENT_VECTORS = [[3, 4], [2, 0], [0, 5], [1, 1]]  # unit: [.6, .8], [1, 0], [0, 1], [1/sqrt2, 1/sqrt2]


def test_content_knn_scores_are_dot_products_with_the_summed_unit_profile():
    model = ContentKNN().fit(log([("u", 0, T0), ("u", 0, T0), ("v", 1, T0)]), table(4, CONTENT_VECTORS))
    scores = model.score(np.array(["x", "y", "z"]), [np.array([1, 2]), np.array([1, 1]), np.array([], np.int64)])
    r = 1 / np.sqrt(2)
    np.testing.assert_allclose(scores[:2], [[0.6 + 0.8, 1, 1, 2 * r],   # profile [1, 1]
                                            [1.2, 2, 0, 2 * r]],        # profile [2, 0]: repeats count
                               atol=ATOL)
    np.testing.assert_allclose(scores[2], POPULARITY_FALLBACK * np.array([1, 0.5, 0, 0]), atol=ATOL)  # positives 2, 1, 0, 0
    assert model.name == "content-kNN"


def test_content_knn_identical_vectors_tie_break_by_id_not_by_catalog_order():
    vectors = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [0, 1], [1, 1]], np.float32)
    tab = table(6, vectors)
    positives = log([("u", 0, T0)])
    ranking = ranked_ids(ContentKNN().fit(positives, tab), tab, history=[1])
    order = np.array([5, 4, 3, 2, 1, 0])
    moved = table(6, vectors[order], ids=tab.ids[order])
    np.testing.assert_array_equal(ranked_ids(ContentKNN().fit(positives.assign(row=5), moved), moved, history=[4]), ranking)
    assert set(ranking[:4]) == {"i1", "i2", "i3", "i4"}


# --- id two-tower ------------------------------------------------------------------------------------

def test_id_two_tower_users_rank_their_groups_unseen_items_first():
    n = 40
    positives = block_log(n_users=60, n_items=n, per_user=8)
    tags = np.zeros((n + 1, 2), np.float32)
    tags[np.arange(n + 1) < n // 2, 0] = 1.0
    tags[np.arange(n + 1) >= n // 2, 1] = 1.0
    tags[n] = [1.0, 0.0]  # an extra group-A item nobody consumed: only its tags place it
    model = IdTwoTower(dim=16, epochs=3, batch_size=64, learning_rate=0.05, random_state=0).fit(positives, table(n + 1, tags=tags))
    users = np.array([f"u{u}" for u in range(60)] + ["new"])
    seen = [positives.loc[positives["user_id"] == u, "row"].to_numpy() for u in users[:-1]] + [np.array([0, 1, 2])]
    scores = model.score(users, seen)
    unseen = metrics.exclude(scores, np.array([np.pad(s, (0, 8 - len(s)), constant_values=-1) for s in seen]))
    own = np.array([u % 2 for u in range(60)] + [0])
    top = metrics.top_k(unseen, 5)
    share = (group_of(top, n // 2, extra_a=[n]) == own[:, None]).mean()
    assert share >= 0.95
    a_users = own == 0
    assert (scores[a_users, n] > scores[a_users, n // 2:n].max(axis=1)).all()  # the unconsumed item, placed by its tag
    assert model.name == "id two-tower (TFRS)"


def test_id_two_tower_without_tags_or_logq_is_deterministic_and_separates_groups():
    n = 40
    positives = block_log(n_users=60, n_items=n, per_user=8)
    users = np.array(["u0", "u1", "new"])
    histories = [np.array([], np.int64), np.array([], np.int64), np.array([0, 1])]
    first, second = (IdTwoTower(dim=16, epochs=3, batch_size=64, learning_rate=0.05, logq=False, use_tags=False, random_state=7)
                     .fit(positives, table(n)).score(users, histories) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    own = np.array([0, 1, 0])
    means = np.stack([first[:, : n // 2].mean(axis=1), first[:, n // 2:].mean(axis=1)], axis=1)
    np.testing.assert_array_equal(means.argmax(axis=1), own)
    scores = IdTwoTower(dim=16, epochs=1, batch_size=64).fit(positives, table(n)).score(np.array(["new"]), [np.array([], np.int64)])
    popularity = np.bincount(positives["row"], minlength=n)
    np.testing.assert_allclose(scores[0], POPULARITY_FALLBACK * popularity / popularity.max(), atol=ATOL)


def test_id_two_tower_warm_start_continues_to_the_weights_of_one_fit():
    """warm_start: 2 epochs, then 5 on the same positives, give exactly a fresh 5-epoch fit; other positives
    or fewer epochs start again; evaluation's grid search uses it (one fit per temperature)."""
    from vistaste.towers.evaluation import grid_fits

    positives, tab = block_log(n_users=30, n_items=20, per_user=5), table(20)
    fresh = IdTwoTower(dim=8, epochs=5, batch_size=16, random_state=3).fit(positives, tab)
    warm = IdTwoTower(dim=8, epochs=2, batch_size=16, random_state=3, warm_start=True).fit(positives, tab)
    after_two = warm.item_vectors_.copy()
    warm.set_params(epochs=5).fit(positives, tab)
    assert not np.array_equal(after_two, warm.item_vectors_)
    np.testing.assert_array_equal(warm.item_vectors_, fresh.item_vectors_)
    np.testing.assert_array_equal(warm.user_vectors_, fresh.user_vectors_)
    model = warm.model_
    warm.set_params(epochs=3).fit(positives, tab)  # fewer epochs than trained: a fresh fit
    assert warm.model_ is not model and warm.epochs_trained_ == 3
    model = warm.model_
    warm.set_params(epochs=4).fit(positives.iloc[1:], tab)  # other positives: a fresh fit
    assert warm.model_ is not model
    for change in ({"temperature": 0.5}, {"batch_size": 8}, {"dim": 4}):  # another setting: a fresh fit
        model = warm.model_
        warm.set_params(epochs=5, **change).fit(positives.iloc[1:], tab)
        assert warm.model_ is not model and warm.item_vectors_.shape[1] == warm.dim
    model = warm.model_
    warm.set_params(epochs=6).fit(positives.iloc[1:], table(20, tags=np.eye(20, 3, dtype=np.float32)))  # another table
    assert warm.model_ is not model
    # An interrupted fit is never continued: the next one starts again.
    warm.set_params(epochs=9)
    original = warm.model_.fit
    warm.model_.fit = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        warm.fit(positives.iloc[1:], table(20, tags=np.eye(20, 3, dtype=np.float32)))
    warm.model_.fit = original
    model = warm.model_
    warm.fit(positives.iloc[1:], table(20, tags=np.eye(20, 3, dtype=np.float32)))
    assert warm.model_ is not model and warm.epochs_trained_ == 9
    grid = [{"epochs": e, "temperature": t} for t in (0.1, 0.2) for e in (3, 1)]
    fits = [(params, id(m.model_), m.epochs_trained_) for params, m in grid_fits(
        lambda **p: IdTwoTower(dim=8, batch_size=16, **p), grid, positives, tab, seed=0)]
    assert [p for p, _, _ in fits] == [{"epochs": 1, "temperature": 0.1}, {"epochs": 3, "temperature": 0.1},
                                       {"epochs": 1, "temperature": 0.2}, {"epochs": 3, "temperature": 0.2}]
    assert fits[0][1] == fits[1][1] != fits[2][1] == fits[3][1] and [e for _, _, e in fits] == [1, 3, 1, 3]


# --- parameters, inputs, grids -----------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: MostPopular(window_days=0), "window_days must be positive, got 0"),
    (lambda: MostPopular(random_state=-1), "random_state must be a non-negative integer, got -1"),
    (lambda: ItemKNN(neighbours=0), "neighbours must be positive, got 0"),
    (lambda: ItemKNN(neighbours=2.5), "neighbours must be an integer, got 2.5"),
    (lambda: ItemKNN(shrink=-1), "shrink must be non-negative, got -1"),
    (lambda: ALS(factors=0), "factors must be positive, got 0"),
    (lambda: ALS(regularization=-0.1), "regularization must be non-negative, got -0.1"),
    (lambda: ALS(alpha=-1), "alpha must be non-negative, got -1"),
    (lambda: ALS(iterations=0), "iterations must be positive, got 0"),
    (lambda: ContentKNN(random_state=None), "random_state must be a non-negative integer, got None"),
    (lambda: IdTwoTower(dim=0), "dim must be positive, got 0"),
    (lambda: IdTwoTower(epochs=0), "epochs must be positive, got 0"),
    (lambda: IdTwoTower(batch_size=-8), "batch_size must be positive, got -8"),
    (lambda: IdTwoTower(learning_rate=0), "learning_rate must be positive, got 0"),
    (lambda: IdTwoTower(temperature=0), "temperature must be positive, got 0"),
])
def test_parameters_are_checked_in_init(make, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        make()


def test_fit_and_score_check_their_inputs():
    model = ItemKNN()
    with pytest.raises(NotFittedError):
        model.score(np.array(["u"]), [np.array([0])])
    with pytest.raises(ValueError, match=r"positives lacks column\(s\) \['timestamp'\]"):
        model.fit(KNN_LOG.drop(columns="timestamp"), table(4))
    with pytest.raises(ValueError, match="positives is empty"):
        model.fit(KNN_LOG.iloc[:0], table(4))
    with pytest.raises(ValueError, match=r"row must be in \[0, 3\).*\[3\]"):
        model.fit(KNN_LOG, table(3))
    model.fit(KNN_LOG, table(4))
    with pytest.raises(ValueError, match=r"history rows must be in \[0, 4\), got \[4\] for user 'u'"):
        model.score(np.array(["u"]), [np.array([4])])
    with pytest.raises(ValueError, match="one entry per user: 2 histories for 1 users"):
        model.score(np.array(["u"]), [np.array([0]), np.array([1])])
    # PAD ignored
    np.testing.assert_array_equal(model.score(np.array(["u"]), [np.array([-1, 0])]), model.score(np.array(["u"]), [np.array([0])]))


def test_grids_build_their_baselines_and_unknown_names_fail():
    assert {"most-popular", "most-popular-recent", "item-knn", "als", "content-knn", "id-two-tower"} <= set(PARAM_GRIDS)
    for name, grid in PARAM_GRIDS.items():
        assert 1 <= len(grid) <= 12
        for params in grid:
            params_set = make_baseline(name, **params).get_params()
            assert {key: params_set[key] for key in params} == params
    assert make_baseline("most-popular-recent", window_days=7).name == "most-popular (last 7 days)"
    with pytest.raises(ValueError, match="unknown baseline 'svd'"):
        make_baseline("svd")
    with pytest.raises(TypeError):
        make_baseline("als", factor=3)
