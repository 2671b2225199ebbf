"""What an exported SavedModel holds and computes: :class:`RecommenderModule`, the ``tf.Module`` whose
signatures `vistaste export` (:mod:`vistaste.serving.export`) saves (``recommend``, ``recommend_history``,
``recommend_unseen``, ``candidates``, ``candidates_by_query``, ``user_embedding``; what each returns is described there).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras

from vistaste.towers.collaborative import content
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import PAD, ItemTable
from vistaste.towers.inputs import user_inputs
from vistaste.towers.trained import TrainedTwoTower


class RecommenderModule(tf.Module):
    """What the SavedModel holds: featurization by item id, the user tower, the ScaNN index and the trend
    boost chosen in training with every item's trend at export, so the SavedModel alone ranks as
    ``evaluate`` measured (and as the service serves until live clicks move the trends)."""

    def __init__(self, trained: TrainedTwoTower, table: ItemTable, index, user_ids: np.ndarray, user_histories: np.ndarray,
                 item_embeddings: np.ndarray, consumed: list[np.ndarray] | None = None, item_trend: np.ndarray | None = None,
                 k: int = CANDIDATES):
        super().__init__()
        self.history_length = trained.config.history_length
        self.k = k
        # The tower's call and what it reads (weights, id lookup tables), not the Keras layer: a tracked layer
        # makes ``tf.saved_model.save`` trace and store Keras's own functions for reviving it, which no
        # signature uses (measured on a 500-item world: 0.9 s of a 4.9 s save).
        tower = trained.model.user_tower
        self._user_tower = tower.__call__  # a bound method: called, never tracked
        self.user_tower_weights = list(tower.weights)
        self.user_tower_tables = [layer.lookup_table for layer in tower.submodules if isinstance(layer, tf_keras.layers.StringLookup)]
        self.index = index
        self.item_embeddings = tf.Variable(item_embeddings.astype(np.float32), trainable=False, name="item_embeddings")
        self.item_ids = tf.Variable(table.ids.astype(str), trainable=False, name="item_ids")
        # The collaborative term (towers/collaborative.py): ALS item factors in this table's row order, and
        # what each query's solve needs; absent when the model has none.
        collaborative = trained.collaborative.aligned(table.ids, content(table)) if trained.collaborative is not None else None
        self.has_collaborative = collaborative is not None
        if collaborative is not None:
            self.cf_item_factors = tf.Variable(collaborative.item_factors.astype(np.float64), trainable=False, name="cf_item_factors")
            self.cf_gram = tf.Variable(collaborative.gram(), trainable=False, name="cf_gram")
            self.cf_alpha = tf.Variable(float(collaborative.alpha), trainable=False, dtype=tf.float64, name="cf_alpha")
            self.cf_gamma = tf.Variable(float(collaborative.gamma), trainable=False, dtype=tf.float64, name="cf_gamma")
        self.item_vectors = tf.Variable(table.vectors, trainable=False, name="item_features")
        self.item_tags = tf.Variable(table.tags, trainable=False, name="item_tags")
        self.user_histories = tf.Variable(user_histories.astype(np.int64), trainable=False, name="user_histories")
        # Every item each known user consumed (rows), for the boost's candidates in ``recommend``.
        consumed = consumed if consumed is not None else [h[h != PAD] for h in user_histories]
        self.consumed_rows = tf.Variable(np.concatenate([np.asarray(c, np.int64) for c in consumed] + [np.zeros(0, np.int64)]),
                                         trainable=False, name="consumed_rows")
        self.consumed_splits = tf.Variable(np.concatenate([[0], np.cumsum([len(c) for c in consumed])]).astype(np.int64),
                                           trainable=False, name="consumed_splits")
        # The trend boost: each user's CANDIDATES best unseen items are lifted by weight * trend.
        item_trend = np.zeros(len(table)) if item_trend is None else item_trend
        self.trend_weight = tf.Variable(float(trained.trend.weight), trainable=False, dtype=tf.float32, name="trend_weight")
        self.item_trend = tf.Variable(np.asarray(item_trend, np.float32), trainable=False, name="item_trend")
        self.boost_candidates = tf.Variable(CANDIDATES, trainable=False, dtype=tf.int32, name="boost_candidates")
        # A mixed slate (TrendSetting.slots > 0): only that many best lifted candidates go first.
        self.trend_slots = tf.Variable(int(trained.trend.slots), trainable=False, dtype=tf.int32, name="trend_slots")
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(table.ids.astype(str)), tf.range(len(table), dtype=tf.int64)),
            default_value=PAD)
        self.user_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(np.asarray(user_ids).astype(str)), tf.range(len(user_ids), dtype=tf.int64)),
            default_value=-1)

    def _query(self, user_id, rows, consumed=None):
        """The user's vector: the tower's from the history ``rows``, then (with a collaborative term) gamma
        times the ALS factors solved from the ``consumed`` item rows ``[batch, n]`` (PAD and repeats ignored)."""
        towers = self._user_tower(user_inputs(user_id, rows, self.item_vectors, self.item_tags))
        if not self.has_collaborative:
            return towers
        return tf.concat([towers, tf.cast(self.cf_gamma * self._fold_in(consumed), tf.float32)], axis=1)

    def _fold_in(self, consumed):
        """``vistaste.towers.collaborative.Collaborative.user_factors`` in the graph: per user, solve
        ``(Y^T Y + lambda I + alpha Y_u^T Y_u) x = (1 + alpha) Y_u^T 1`` over their distinct consumed items."""
        rows = tf.sort(consumed, axis=1)
        previous = tf.concat([tf.fill([tf.shape(rows)[0], 1], tf.constant(PAD, tf.int64)), rows[:, :-1]], axis=1)
        keep = tf.cast((rows != PAD) & (rows != previous), tf.float64)[:, :, None]
        mine = tf.gather(self.cf_item_factors, tf.maximum(rows, 0)) * keep
        system = self.cf_gram[None] + self.cf_alpha * tf.einsum("bni,bnj->bij", mine, mine)
        return tf.linalg.solve(system, ((1.0 + self.cf_alpha) * tf.reduce_sum(mine, axis=1))[:, :, None])[:, :, 0]

    def _consumed(self, user_id, history):
        """What the collaborative term reads for an explicit history: its items and, for a user known at
        export, everything they had consumed by then (``None`` without a collaborative term)."""
        if not self.has_collaborative:
            return None
        return tf.concat([self.item_rows.lookup(history), self._stored(user_id)[1]], axis=1)

    @staticmethod
    def _seen(rows):
        """Item ``rows`` ``[batch, n]`` (PAD ignored) as a set to search: each row sorted behind one PAD column
        ``[batch, n + 1]``, and the number of distinct items in it ``[batch]``. Sparse on purpose: a dense
        ``[batch, items]`` mask cost ~0.7 ms a query at 1M items, more than the ScaNN search it surrounds."""
        rows = tf.sort(tf.concat([tf.fill([tf.shape(rows)[0], 1], tf.constant(PAD, tf.int64)), rows], axis=1), axis=1)
        # PAD (-1) sorts below every item row, so each change of value along a sorted row is one more distinct item.
        return rows, tf.reduce_sum(tf.cast(rows[:, 1:] != rows[:, :-1], tf.int32), axis=1)

    @staticmethod
    def _member(seen, rows):
        """[batch, m] True where an item row of ``rows`` ([batch, m], no PAD) is in ``seen`` (:meth:`_seen`'s sorted rows)."""
        at = tf.minimum(tf.searchsorted(seen, rows), tf.shape(seen)[1] - 1)
        return tf.gather(seen, at, batch_dims=1) == rows

    def _ranked(self, query, seen_rows, k, drop_seen: bool, boost: bool):
        """The top ``k`` as serving ranks them (``vistaste.towers.trend_boost.boosted``): the
        ``boost_candidates`` best items not among ``seen_rows`` (item rows ``[batch, n]``, PAD ignored) lifted
        by ``trend_weight * item_trend``, every other item below them in model order (a mixed slate,
        ``trend_slots`` > 0: only the best ``trend_slots`` lifted go first, the rest in model order); seen items are dropped
        (``drop_seen``) or keep their place by the model (they never take a candidate's place). From the
        index while it holds the candidates, else by exact scoring over the whole catalog."""
        n_items = tf.shape(self.item_embeddings)[0]
        weight = self.trend_weight if boost else None
        candidates = tf.where(weight != 0, self.boost_candidates, 0) if boost else tf.constant(0)
        seen, seen_count = self._seen(seen_rows)
        scores, ids = self.index(query)
        index_rows = self.item_rows.lookup(ids)
        index_seen = self._member(seen, index_rows)
        unseen_total = n_items - seen_count
        need = tf.minimum(tf.maximum(candidates, k if drop_seen else 0), unseen_total)
        enough = tf.reduce_all(tf.reduce_sum(tf.cast(~index_seen, tf.int32), axis=1) >= need)

        def from_index():
            return scores, index_rows, index_seen

        def exact():
            # Enough of the model's order to hold the candidates, every seen item among them and ``k`` more.
            depth = tf.minimum(n_items, candidates + tf.reduce_max(n_items - unseen_total) + k)
            top, order = tf.math.top_k(tf.matmul(query, self.item_embeddings, transpose_b=True), depth)
            order = tf.cast(order, tf.int64)
            return top, order, self._member(seen, order)

        scores, rows, in_seen = tf.cond(enough, from_index, exact)
        trend = tf.gather(self.item_trend, rows)
        lifted = scores  # without the boost (its weight 0 below gives the same), the model's order
        if boost:
            unseen_before = tf.cumsum(tf.cast(~in_seen, tf.int32), axis=1, exclusive=True)
            candidate = (unseen_before < candidates) & ~in_seen
            spread = tf.reduce_max(scores, axis=1, keepdims=True) - tf.reduce_min(scores, axis=1, keepdims=True)
            below = tf.where(weight != 0, spread + tf.abs(weight) + 1.0, 0.0)  # under every candidate, model order kept
            # A seen item ranked among the candidates by the model keeps its score (it is above the lifted tail).
            lifted = tf.where(candidate, scores + weight * trend, tf.where(unseen_before < candidates, scores, scores - below))
            lifted = self._mixed(scores, lifted, candidate, tf.where(weight != 0, self.trend_slots, 0))
        minus_inf = tf.constant(-np.inf, tf.float32)
        if drop_seen:
            lifted = tf.where(in_seen, minus_inf, lifted)
        top, position = tf.math.top_k(lifted, tf.minimum(k, tf.shape(lifted)[1]))
        top_rows = tf.gather(rows, position, batch_dims=1)
        top_ids = tf.where(tf.math.is_inf(top), tf.constant("", tf.string), tf.gather(self.item_ids, top_rows))
        return {"scores": top, "item_ids": top_ids, "relevance": tf.gather(scores, position, batch_dims=1),
                "trend": tf.where(tf.math.is_inf(top), 0.0, tf.gather(trend, position, batch_dims=1)),
                "from_index": tf.fill(tf.shape(top)[:1], enough)}

    @staticmethod
    def _mixed(scores, lifted, candidate, slots):
        """A mixed slate (``vistaste.towers.trend_boost.mixed``): the ``slots`` best ``lifted`` candidates
        first, in that order, above every other item, which keeps its model ``scores``; ``slots`` 0: ``lifted``."""
        def mix():
            masked = tf.where(candidate, lifted, tf.constant(-np.inf, tf.float32))
            kth = tf.math.top_k(masked, tf.maximum(tf.minimum(slots, tf.shape(masked)[1]), 1)).values[:, -1:]
            head = candidate & (masked >= kth)
            top = tf.reduce_max(scores, axis=1, keepdims=True)
            lowest = tf.reduce_min(tf.where(head, lifted, tf.constant(np.inf, tf.float32)), axis=1, keepdims=True)
            shift = tf.where(tf.math.is_finite(lowest), tf.maximum(top - lowest, 0.0) + 1.0, 0.0)
            return tf.where(head, lifted + shift, scores)

        return tf.cond(slots > 0, mix, lambda: lifted)

    def _stored(self, user_id):
        row = self.user_rows.lookup(user_id)
        stored = tf.gather(self.user_histories, tf.maximum(row, 0))
        history = tf.where((row >= 0)[:, None], stored, tf.fill(tf.shape(stored), tf.constant(PAD, tf.int64)))
        # Splits written by the export itself: no validation asserts (each one a function in every signature).
        consumed = tf.RaggedTensor.from_row_splits(self.consumed_rows, self.consumed_splits, validate=False)
        consumed = tf.gather(consumed, tf.maximum(row, 0)).to_tensor(default_value=PAD)
        consumed = tf.where((row >= 0)[:, None], consumed, tf.fill(tf.shape(consumed), tf.constant(PAD, tf.int64)))
        return history, consumed

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string)])
    def recommend(self, user_id):
        """The top ``k`` for known users from their history stored at export (unknown users: empty history),
        nothing excluded; the trend boost lifts the best items the user has not consumed."""
        history, consumed = self._stored(user_id)
        return {**self._boosted(self._query(user_id, history, consumed), consumed), "history_length": _history_length(history)}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.int64)])
    def _boosted(self, query, seen_rows):
        """The ``k`` best with the trend boost, nothing dropped: ``recommend``'s and ``recommend_history``'s
        ranking, one function both call."""
        return self._ranked(query, seen_rows, self.k, drop_seen=False, boost=True)

    def _history_rows(self, history):
        rows = self.item_rows.lookup(history)
        # Keep the last `history_length` known items, right-aligned like training histories.
        known = rows != PAD
        order = tf.argsort(tf.cast(known, tf.int32) * (tf.range(tf.shape(rows)[1], dtype=tf.int32)[None, :] + 1), axis=1, stable=True)
        rows = tf.gather(rows, order, batch_dims=1)
        width = tf.shape(rows)[1]
        pad = tf.fill([tf.shape(rows)[0], tf.maximum(self.history_length - width, 0)], tf.constant(PAD, tf.int64))
        return tf.concat([pad, rows], axis=1)[:, -self.history_length:]

    # The signatures that take a history call ``user_embedding`` (one copy of the tower in the SavedModel), and
    # ``candidates`` calls ``candidates_by_query``: 41 functions of 1,715 graph nodes instead of 46 of 3,140, loads
    # ~22% and exports ~0.9 s cheaper (session 18, a 500-item export), the same answers; the nested call costs the
    # ``candidates`` signature ~0.15 ms a query, not the service's default path (``user_embedding`` and the index).
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def user_embedding(self, user_id, history):
        """The user tower's query vector for an explicit history (as ``recommend_history`` searches with), and
        how many of the history's items the tower read (``history_length``, as the other signatures give it)."""
        rows = self._history_rows(history)
        return {"embedding": self._query(user_id, rows, self._consumed(user_id, history)), "history_length": _history_length(rows)}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def recommend_history(self, user_id, history):
        """The top ``k`` from an explicit history of item ids (oldest first, "" pads; unknown ids are ignored;
        the tower reads the last ``history_length``). Nothing is excluded; the trend boost lifts the best
        items *not in the history* (pass everything the user consumed, then drop those items: the rest is
        the ranking ``evaluate`` measures)."""
        user = self.user_embedding(user_id, history)
        return {**self._boosted(user["embedding"], self.item_rows.lookup(history)), "history_length": user["history_length"]}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.string), tf.TensorSpec([], tf.int32)])
    def recommend_unseen(self, user_id, history, exclude, k):
        """The top ``k`` items not in ``exclude`` ("" pads; unknown ids ignored) for an explicit history, with
        the trend boost, as evaluated. Fewer than ``k`` unseen items in the whole catalog: the remaining
        slots hold item id "" and score -inf."""
        user = self.user_embedding(user_id, history)
        out = self._ranked(user["embedding"], self.item_rows.lookup(exclude), k, drop_seen=True, boost=True)
        return {**out, "history_length": user["history_length"]}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.string), tf.TensorSpec([], tf.int32)])
    def candidates(self, user_id, history, exclude, k):
        """``recommend_unseen`` by the model's scores alone: the candidates a live re-ranker lifts by
        *current* trends (the service: exported clicks plus live ones)."""
        user = self.user_embedding(user_id, history)
        return {**self.candidates_by_query(user["embedding"], exclude, k), "history_length": user["history_length"]}

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([], tf.int32)])
    def candidates_by_query(self, query, exclude, k):
        """``candidates`` for query vectors ``[batch, d]`` the caller already has (``user_embedding``'s, or a
        tower run elsewhere): the retrieval stage alone, the index and the same exclusion and ranking."""
        return self._ranked(query, self.item_rows.lookup(exclude), k, drop_seen=True, boost=False)


def _history_length(rows):
    return tf.reduce_sum(tf.cast(rows != PAD, tf.int32), axis=1)
