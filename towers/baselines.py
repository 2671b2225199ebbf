"""Baselines every report prints beside the two-tower model, scikit-learn style.

Each baseline stores its parameters in ``__init__`` (checked there), learns in ``fit(positives, table)``
(state ends in ``_``) and scores with ``score(user_ids, histories) -> [U, n_items]`` float64, higher is
better. ``positives`` has one row per consumption: ``user_id`` (str), ``row`` (int item row in
``table``), ``timestamp`` (tz-aware UTC), sorted by time. ``histories[u]`` holds user u's item rows
before the cut, oldest first; it may be empty, and the user may be unknown to ``fit`` (a new user whose
first clicks are given). Seen items are *not* excluded here: the caller does that
(:func:`vistaste.towers.metrics.exclude`).

(Six estimators in one module, over 350 lines on purpose: they share the interface, the tie-break and
the parameter grids below, and a reader compares them side by side.)

Shared rules:

- Exact ties are broken by a fixed random permutation of the items, keyed on ``random_state`` and the
  item ids (so reordering the catalog changes nothing), added as a tiny epsilon: ``TIE_EPSILON`` times
  the row's largest absolute score. Never by item order.
- A user with nothing to go on (empty history and, where the method has user state, unknown to
  ``fit``) gets popularity scaled into ``[0, POPULARITY_FALLBACK]``, so every user still has a ranking.
- How repeated (user, item) pairs count: :class:`MostPopular`, :class:`ALS`, :class:`ContentKNN` and
  :class:`IdTwoTower` count every consumption; :class:`ItemKNN` is binary (co-occurrence of distinct
  items).

Example (``positives`` and ``table`` as above, 500 items)::

    model = make_baseline("item-knn", neighbours=50).fit(positives, table)
    model.score(np.array(["u1", "new"]), [np.array([3, 7]), np.array([], np.int64)]).shape  # (2, 500)

``PARAM_GRIDS`` lists small grids for choosing each method's settings on a validation slice; the
caller does the choosing (``evaluation.grid_fits``, which warm-starts the id two-tower's epochs: a plain
loop over its grid trains 100 epochs where that trains 40).
"""
from __future__ import annotations

import functools
import hashlib

import numpy as np
import pandas as pd
import scipy.sparse
import threadpoolctl
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from vistaste.data.trends import recent_popularity
from vistaste.data.vectors import unit_rows
from vistaste.towers.features import PAD, ItemTable

TIE_EPSILON = 1e-9  # tie-break term, relative to the row's largest absolute score
POPULARITY_FALLBACK = 1e-3  # users with nothing to go on get popularity scaled into [0, this]
_CHUNK = 4096  # items per float64 block when scoring content vectors

__all__ = ["ALS", "ContentKNN", "IdTwoTower", "ItemKNN", "MostPopular", "PARAM_GRIDS", "make_baseline"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_positive(name: str, value, integer: bool = False) -> None:
    if integer:
        _check(isinstance(value, (int, np.integer)) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
    _check(value > 0, f"{name} must be positive, got {value}")


def _check_random_state(random_state) -> None:
    _check(isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool) and random_state >= 0,
           f"random_state must be a non-negative integer, got {random_state!r}")


def _tie_break(item_ids: np.ndarray, random_state: int) -> np.ndarray:
    """Values in [0, 1), one per item, from a random permutation keyed on the item *ids* and
    ``random_state`` (a keyed hash), so a reordered catalog breaks ties the same way; higher wins."""
    key = int(random_state).to_bytes(8, "little")
    digests = np.fromiter((int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8, key=key).digest(), "little") for i in item_ids),
                          dtype=np.uint64, count=len(item_ids))
    rank = np.empty(len(item_ids), np.float64)
    rank[np.argsort(digests, kind="stable")] = np.arange(len(item_ids))
    return rank / max(len(item_ids), 1)


def _break_ties(scores: np.ndarray, tie_break: np.ndarray) -> np.ndarray:
    """``scores`` plus ``TIE_EPSILON * max|row| * tie_break`` (in place; an all-zero row uses scale 1)."""
    scale = np.abs(scores).max(axis=1, keepdims=True) if scores.size else np.ones((len(scores), 1))
    scale[scale == 0] = 1.0
    scores += TIE_EPSILON * scale * tie_break[None, :]
    return scores


class _Baseline(BaseEstimator):
    """Shared input checks, popularity, tie-breaking; subclasses implement ``_fit`` and ``_score``."""

    name = "baseline"

    def fit(self, positives: pd.DataFrame, table: ItemTable) -> "_Baseline":
        """Learn from ``positives`` (``user_id``, ``row``, ``timestamp``; one row per consumption)."""
        missing = [c for c in ("user_id", "row", "timestamp") if c not in positives.columns]
        _check(not missing, f"positives lacks column(s) {missing}; it needs user_id, row and timestamp")
        _check(len(positives) > 0, "positives is empty: there is nothing to fit")
        n_items = len(table)
        rows = positives["row"].to_numpy().astype(np.int64)
        bad = (rows < 0) | (rows >= n_items)
        _check(not bad.any(), f"positives row must be in [0, {n_items}) (the item table's rows), got {rows[bad][:3].tolist()}")
        self.n_items_ = n_items
        self.popularity_ = np.bincount(rows, minlength=n_items).astype(np.float64)
        self.tie_break_ = _tie_break(table.ids, self.random_state)
        self._fit(positives, rows, table)
        return self

    def score(self, user_ids: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Scores ``[len(user_ids), n_items]`` float64; ``histories[u]``: item rows, oldest first (``PAD``
        entries are ignored). Deterministic for a fixed ``random_state``."""
        check_is_fitted(self)
        user_ids = np.asarray(user_ids).astype(str)
        _check(user_ids.ndim == 1, f"user_ids must be one-dimensional, got shape {user_ids.shape}")
        _check(len(histories) == len(user_ids),
               f"histories must have one entry per user: {len(histories)} histories for {len(user_ids)} users")
        cleaned = []
        for u, history in enumerate(histories):
            history = np.asarray(history, dtype=np.int64).ravel()
            history = history[history != PAD]
            bad = (history < 0) | (history >= self.n_items_)
            _check(not bad.any(),
                   f"history rows must be in [0, {self.n_items_}), got {history[bad][:3].tolist()} for user {str(user_ids[u])!r}")
            cleaned.append(history)
        scores = np.asarray(self._score(user_ids, cleaned), dtype=np.float64)
        return _break_ties(scores, self.tie_break_)

    def _popularity_fallback(self) -> np.ndarray:
        """Training popularity scaled into ``[0, POPULARITY_FALLBACK]``."""
        top = self.popularity_.max()
        return POPULARITY_FALLBACK * self.popularity_ / top if top > 0 else np.zeros(self.n_items_)

    def _fit(self, positives: pd.DataFrame, rows: np.ndarray, table: ItemTable) -> None:
        raise NotImplementedError

    def _score(self, user_ids: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def _user_item_matrix(user_codes: np.ndarray, rows: np.ndarray, n_users: int, n_items: int) -> scipy.sparse.csr_matrix:
    """Counts ``[n_users, n_items]`` (duplicate pairs are summed), float32."""
    ones = np.ones(len(rows), np.float32)
    matrix = scipy.sparse.csr_matrix((ones, (user_codes, rows)), shape=(n_users, n_items), dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


def _history_matrix(histories: list[np.ndarray], n_items: int) -> scipy.sparse.csr_matrix:
    """Counts of each history's rows, ``[len(histories), n_items]`` float32."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    users = np.repeat(np.arange(len(histories)), lengths)
    rows = np.concatenate(histories) if len(histories) else np.zeros(0, np.int64)
    return _user_item_matrix(users, rows, len(histories), n_items)


class MostPopular(_Baseline):
    """Counts of positives (every consumption counts), the same for every user.

    ``window_days=None``: the whole training period ("most-popular"). Otherwise only positives with
    ``timestamp >= latest - window_days`` count, ``latest`` being the last training timestamp
    ("most-popular (last 7 days)"). Scores are the counts plus a tie-break below one count, so
    ``np.floor(scores)`` gives the counts back.
    """

    def __init__(self, window_days: float | None = None, random_state: int = 0):
        if window_days is not None:
            _check_positive("window_days", window_days)
        self.window_days = window_days
        _check_random_state(random_state)
        self.random_state = random_state

    @property
    def name(self) -> str:
        return "most-popular" if self.window_days is None else f"most-popular (last {self.window_days:g} days)"

    def _fit(self, positives, rows, table):
        if self.window_days is None:
            self.counts_ = self.popularity_.copy()
        else:
            self.window_start_ = pd.to_datetime(positives["timestamp"]).max() - pd.Timedelta(days=self.window_days)
            self.counts_ = recent_popularity(rows, positives["timestamp"], self.n_items_, self.window_days)

    def _score(self, user_ids, histories):
        return np.tile(self.counts_, (len(user_ids), 1))


class ItemKNN(_Baseline):
    """Item-item cosine similarity on the binary user x item matrix, with shrinkage.

    ``sim(i, j) = co(i, j) / (sqrt(n_i * n_j) + shrink)``, where ``co`` counts users who consumed both and
    ``n_i`` users who consumed i; ``sim(i, i) = 0``. Each item keeps its ``neighbours`` most similar
    items (row i of ``similarity_``). A user's score for j is the sum of ``similarity_[i, j]`` over the
    distinct items i in their history. Empty history: popularity.
    """

    name = "item-kNN"

    def __init__(self, neighbours: int = 100, shrink: float = 10.0, random_state: int = 0):
        _check_positive("neighbours", neighbours, integer=True)
        _check(shrink >= 0, f"shrink must be non-negative, got {shrink}")
        self.neighbours = neighbours
        self.shrink = shrink
        _check_random_state(random_state)
        self.random_state = random_state

    def _fit(self, positives, rows, table):
        _, user_codes = np.unique(positives["user_id"].to_numpy().astype(str), return_inverse=True)
        binary = _user_item_matrix(user_codes, rows, int(user_codes.max()) + 1, self.n_items_)
        binary.data[:] = 1.0
        binary = binary.astype(np.float64)
        co = (binary.T @ binary).tocoo()
        n = np.asarray(binary.sum(axis=0)).ravel()
        off_diagonal = co.row != co.col
        i, j, c = co.row[off_diagonal], co.col[off_diagonal], co.data[off_diagonal]
        sim = c / (np.sqrt(n[i] * n[j]) + self.shrink)
        # Keep each row's `neighbours` largest similarities; exact ties go to the tie-break permutation.
        order = np.lexsort((-self.tie_break_[j], -sim, i))
        i, j, sim = i[order], j[order], sim[order]
        starts = np.searchsorted(i, i, side="left")
        keep = (np.arange(len(i)) - starts) < self.neighbours
        self.similarity_ = scipy.sparse.csr_matrix((sim[keep], (i[keep], j[keep])), shape=(self.n_items_, self.n_items_))

    def _score(self, user_ids, histories):
        history = _history_matrix(histories, self.n_items_)
        history.data[:] = 1.0
        scores = (history.astype(np.float64) @ self.similarity_).toarray()
        empty = np.array([len(h) == 0 for h in histories], dtype=bool)
        scores[empty] = self._popularity_fallback()
        return scores


class ALS(_Baseline):
    """Implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) with ``implicit``'s CPU solver.

    Confidence ``c = 1 + alpha * count`` for consumed pairs, 1 elsewhere; preference 1 / 0. Users seen in
    ``fit`` score with their fitted factors; other users get factors solved exactly from the given
    history (implicit's ``recalculate_user``, the same weighted least squares); an unknown user with an
    empty history gets popularity. Scores: ``user_factors @ item_factors_.T``.
    """

    name = "ALS (implicit)"

    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 1.0, iterations: int = 15,
                 random_state: int = 0, num_threads: int = 1):
        _check_positive("factors", factors, integer=True)
        _check(regularization >= 0, f"regularization must be non-negative, got {regularization}")
        _check(alpha >= 0, f"alpha must be non-negative, got {alpha}")
        _check_positive("iterations", iterations, integer=True)
        _check_positive("num_threads", num_threads, integer=True)
        self.factors = factors
        self.regularization = regularization
        self.alpha = alpha
        self.iterations = iterations
        _check_random_state(random_state)
        self.random_state = random_state
        self.num_threads = num_threads

    def _confidence(self, counts: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
        # implicit reads the stored value as the confidence itself (it adds (c - 1) * y y^T to Y^T Y),
        # and its own `alpha` only rescales it; so store 1 + alpha * count and give implicit alpha=1.
        confidence = counts.copy()
        confidence.data = (1.0 + self.alpha * confidence.data).astype(np.float32)
        return confidence

    def _fit(self, positives, rows, table):
        from implicit.cpu.als import AlternatingLeastSquares  # CPU class: no GPU probing, no GPU warning

        users, user_codes = np.unique(positives["user_id"].to_numpy().astype(str), return_inverse=True)
        counts = _user_item_matrix(user_codes, rows, len(users), self.n_items_)
        # implicit warns unless BLAS is single-threaded (its solver threads over users instead).
        with threadpoolctl.threadpool_limits(1, "blas"):
            model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=1.0, dtype=np.float32,
                                            iterations=self.iterations, num_threads=self.num_threads, random_state=self.random_state)
            model.fit(self._confidence(counts), show_progress=False)
        self.model_ = model
        self.user_index_ = {u: k for k, u in enumerate(users)}
        self.user_factors_ = np.asarray(model.user_factors)
        self.item_factors_ = np.asarray(model.item_factors)

    def user_factors(self, user_ids: np.ndarray, histories: list[np.ndarray]) -> np.ndarray:
        """Fitted factors for known users, factors solved from ``histories`` (item rows, as in ``score``)
        for the others: ``[U, factors]`` float32; an unknown user with an empty history gets zeros."""
        check_is_fitted(self)
        user_ids = np.asarray(user_ids).astype(str)
        factors = np.zeros((len(user_ids), self.factors), np.float32)
        known = np.array([u in self.user_index_ for u in user_ids], dtype=bool)
        factors[known] = self.user_factors_[[self.user_index_[u] for u in user_ids[known]]]
        unknown = np.flatnonzero(~known)
        if len(unknown):
            counts = _history_matrix([histories[u] for u in unknown], self.n_items_)
            with threadpoolctl.threadpool_limits(1, "blas"):
                factors[unknown] = self.model_.recalculate_user(np.arange(len(unknown)), self._confidence(counts))
        return factors

    def _score(self, user_ids, histories):
        scores = (self.user_factors(user_ids, histories) @ self.item_factors_.T).astype(np.float64)
        nothing = np.array([u not in self.user_index_ and len(h) == 0 for u, h in zip(user_ids, histories)], dtype=bool)
        scores[nothing] = self._popularity_fallback()
        return scores


class ContentKNN(_Baseline):
    """Content (pretrained-vector) kNN: profile = sum of the unit item vectors of every history entry
    (repeats count); score = profile . unit item vector. Empty history: popularity."""

    name = "content-kNN"

    def __init__(self, random_state: int = 0):
        _check_random_state(random_state)
        self.random_state = random_state

    def _fit(self, positives, rows, table):
        self.unit_vectors_ = unit_rows(np.asarray(table.vectors, np.float32))

    def _score(self, user_ids, histories):
        # float64, so that identical item vectors give identical scores and the tie-break decides.
        profiles = np.zeros((len(histories), self.unit_vectors_.shape[1]), np.float64)
        for u, history in enumerate(histories):
            profiles[u] = self.unit_vectors_[history].astype(np.float64).sum(axis=0)
        scores = np.empty((len(histories), self.n_items_), np.float64)
        for start in range(0, self.n_items_, _CHUNK):
            block = self.unit_vectors_[start:start + _CHUNK].astype(np.float64)
            scores[:, start:start + _CHUNK] = profiles @ block.T
        empty = np.array([len(h) == 0 for h in histories], dtype=bool)
        scores[empty] = self._popularity_fallback()
        return scores


class IdTwoTower(_Baseline):
    """A plain TFRS two-tower on ids, independent of vistaste's model.

    User tower: user-id embedding. Item tower: item-id embedding (zero for items without training
    positives) plus, with ``use_tags``, a linear map of the tags multi-hot. Both outputs are
    L2-normalised; ``tfrs.tasks.Retrieval`` in-batch softmax at ``temperature`` with accidental hits
    removed and, with ``logq``, the logQ correction (Yi et al., RecSys 2019) using each item's share of
    training positives. Adam. Every consumption is one training example.

    Users unknown to ``fit``: the normalised mean of their history items' vectors; empty: popularity.
    Defaults: on a generated world (5.9k training positives) batch 256 / temperature 0.2 reached
    recall@10 0.11 against 0.04 for batch 1024 / temperature 0.1 (fewer steps, sharper softmax).
    A fresh ``fit`` calls ``tf_keras.utils.set_random_seed(random_state)``, which also reseeds Python's,
    NumPy's and TensorFlow's global generators.

    ``warm_start`` (scikit-learn's meaning): a refit with more ``epochs`` and everything else unchanged
    (every other parameter, the positives, the item table) continues from the epochs already trained, and
    ends with the weights a fresh fit of that many epochs gives (each epoch's order is drawn from
    (random_state, epoch) alone; the optimizer state carries over): a validation grid over epochs then
    costs one fit of the largest (``evaluation.grid_fits``). Anything else (fewer epochs, another setting,
    other data, an interrupted fit) starts a fresh fit.
    """

    name = "id two-tower (TFRS)"

    def __init__(self, dim: int = 64, epochs: int = 10, batch_size: int = 256, learning_rate: float = 0.01, temperature: float = 0.2,
                 logq: bool = True, use_tags: bool = True, random_state: int = 0, warm_start: bool = False):
        _check_positive("dim", dim, integer=True)
        _check_positive("epochs", epochs, integer=True)
        _check_positive("batch_size", batch_size, integer=True)
        _check_positive("learning_rate", learning_rate)
        _check_positive("temperature", temperature)
        self.dim = dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.temperature = temperature
        self.logq = logq
        self.use_tags = use_tags
        _check_random_state(random_state)
        self.random_state = random_state
        self.warm_start = warm_start

    def _fit(self, positives, rows, table):
        import tf_keras

        user_ids = positives["user_id"].to_numpy().astype(str)
        key = self._warm_key(user_ids, rows, table)
        warm = self.warm_start and getattr(self, "warm_key_", None) == key and self.epochs >= self.epochs_trained_
        self.warm_key_ = None  # set again only once this fit has finished: an interrupted one is not continued
        if warm:
            self._train(user_ids, rows, self.epochs_trained_)
            self.warm_key_ = key
            return
        tf_keras.utils.set_random_seed(self.random_state)
        users = sorted(set(user_ids))
        item_ids = np.asarray(table.ids).astype(str)
        tags = np.asarray(table.tags, np.float32) if self.use_tags and table.tags.shape[1] > 0 else None
        model_class = _id_two_tower_model_class()
        model = model_class(users, sorted(set(item_ids[rows])), item_ids, tags, self.dim, self.temperature, self.logq)
        model.compile(optimizer=tf_keras.optimizers.Adam(self.learning_rate))
        self.model_ = model
        self.user_index_ = {u: k for k, u in enumerate(users)}
        self._train(user_ids, rows, 0)
        self.warm_key_ = key

    def _warm_key(self, user_ids: np.ndarray, rows: np.ndarray, table) -> str:
        """What a warm start must find unchanged: every parameter but ``epochs``, the positives, the table."""
        params = {k: v for k, v in self.get_params().items() if k not in ("epochs", "warm_start")}
        digest = hashlib.sha256(repr(sorted(params.items())).encode())
        for part in (user_ids.astype("U"), rows.astype(np.int64), np.asarray(table.ids).astype("U"), np.asarray(table.tags, np.float32)):
            digest.update(np.ascontiguousarray(part).tobytes())
        return digest.hexdigest()

    def _train(self, user_ids: np.ndarray, rows: np.ndarray, start: int) -> None:
        """Epochs ``start .. epochs - 1``, each over every example in an order drawn from (random_state,
        epoch) alone, so epochs trained in two calls are the epochs of one; then the vectors."""
        import tensorflow as tf

        probability = ((self.popularity_ / self.popularity_.sum())[rows]).astype(np.float32)
        steps = -(-len(rows) // self.batch_size)

        def batches():
            for epoch in range(start, self.epochs):
                order = np.random.default_rng([self.random_state, epoch]).permutation(len(rows))
                for b in range(steps):
                    at = order[b * self.batch_size:(b + 1) * self.batch_size]
                    yield {"user_id": user_ids[at], "row": rows[at], "probability": probability[at]}

        # One iterator runs through every epoch: tf_keras re-creates it each epoch only when the dataset's
        # length is known and equals steps_per_epoch, which a generator's (unknown) never does. A dataset of
        # known length would replay the first epoch's order.
        data = tf.data.Dataset.from_generator(batches, output_signature={
            "user_id": tf.TensorSpec([None], tf.string), "row": tf.TensorSpec([None], tf.int64),
            "probability": tf.TensorSpec([None], tf.float32)})
        self.epochs_trained_ = start
        self.model_.fit(data, epochs=self.epochs, initial_epoch=start, steps_per_epoch=steps, verbose=0)
        self.epochs_trained_ = self.epochs
        self.user_vectors_ = self.model_.user_vectors(tf.constant(list(self.user_index_))).numpy()
        self.item_vectors_ = np.concatenate([self.model_.item_vectors(tf.range(s, min(s + _CHUNK, self.n_items_), dtype=tf.int64)).numpy()
                                             for s in range(0, self.n_items_, _CHUNK)])

    def _score(self, user_ids, histories):
        vectors = np.zeros((len(user_ids), self.dim), np.float32)
        nothing = np.zeros(len(user_ids), bool)
        for u, (user, history) in enumerate(zip(user_ids, histories)):
            if user in self.user_index_:
                vectors[u] = self.user_vectors_[self.user_index_[user]]
            elif len(history):
                vectors[u] = unit_rows(self.item_vectors_[history].mean(axis=0, keepdims=True))[0]
            else:
                nothing[u] = True
        scores = (vectors @ self.item_vectors_.T).astype(np.float64)
        scores[nothing] = self._popularity_fallback()
        return scores


@functools.cache
def _id_two_tower_model_class():
    """Defined lazily so that importing this module does not import TensorFlow."""
    import tensorflow as tf
    import tensorflow_recommenders as tfrs
    import tf_keras

    class IdTwoTowerModel(tfrs.Model):
        def __init__(self, users, trained_items, item_ids, tags, dim, temperature, logq):
            super().__init__()
            self.logq = logq
            self.user_lookup = tf_keras.layers.StringLookup(vocabulary=list(users), num_oov_indices=1, mask_token=None)
            self.user_embedding = tf_keras.layers.Embedding(len(users) + 1, dim,
                                                            embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=0.05))
            self.item_ids = tf.constant(item_ids)  # row -> id: an id and its tags travel together by row
            self.tags = tf.constant(tags) if tags is not None else None
            self.item_lookup = tf_keras.layers.StringLookup(vocabulary=list(trained_items), num_oov_indices=1, mask_token=None)
            self.item_embedding = tf_keras.layers.Embedding(len(trained_items) + 1, dim,
                                                            embeddings_initializer=tf_keras.initializers.RandomNormal(stddev=0.05))
            self.tag_projection = tf_keras.layers.Dense(dim, use_bias=False) if tags is not None else None
            self.task = tfrs.tasks.Retrieval(temperature=temperature, remove_accidental_hits=True)

        def user_vectors(self, user_ids):
            return tf.math.l2_normalize(self.user_embedding(self.user_lookup(user_ids)), axis=-1)

        def item_vectors(self, rows):
            index = self.item_lookup(tf.gather(self.item_ids, rows))
            vectors = self.item_embedding(index) * tf.cast(index > 0, tf.float32)[:, None]  # untrained ids -> zero
            if self.tag_projection is not None:
                vectors = vectors + self.tag_projection(tf.gather(self.tags, rows))
            return tf.math.l2_normalize(vectors, axis=-1)

        def compute_loss(self, features, training=False):
            probability = features["probability"] if self.logq else None
            return self.task(self.user_vectors(features["user_id"]), self.item_vectors(features["row"]),
                             candidate_sampling_probability=probability, candidate_ids=features["row"], compute_metrics=False)

    return IdTwoTowerModel


_MAKERS = {"most-popular": MostPopular, "most-popular-recent": MostPopular, "item-knn": ItemKNN, "als": ALS,
           "content-knn": ContentKNN, "id-two-tower": IdTwoTower}

PARAM_GRIDS: dict[str, list[dict]] = {
    "most-popular": [{}],
    "most-popular-recent": [{"window_days": d} for d in (1, 3, 7, 14)],
    "item-knn": [{"neighbours": k, "shrink": s} for k in (20, 50, 200) for s in (0.0, 10.0)],
    "als": [{"factors": f, "regularization": r, "alpha": a} for f in (32, 64, 128) for r in (0.01, 0.1) for a in (1.0, 10.0)],
    "content-knn": [{}],
    # The epochs are one warm-started fit per temperature (IdTwoTower's warm_start), so four of them cost what
    # two settings of (5, 15) did before; batch 256 won a first check over 1,024.
    "id-two-tower": [{"temperature": t, "epochs": e} for t in (0.1, 0.2) for e in (5, 10, 15, 20)],
}


def make_baseline(name: str, **params) -> _Baseline:
    """A baseline by its ``PARAM_GRIDS`` key, e.g. ``make_baseline("als", factors=32)``; unknown
    parameters raise ``TypeError``."""
    if name not in _MAKERS:
        raise ValueError(f"unknown baseline {name!r}; choose one of {sorted(_MAKERS)}")
    if name == "most-popular-recent" and params.get("window_days") is None:
        raise ValueError("most-popular-recent needs window_days (use 'most-popular' for the whole period)")
    return _MAKERS[name](**params)
