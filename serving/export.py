"""`vistaste export`: one versioned SavedModel directory with the user tower and a ScaNN index.

Layout (like TF Serving's): ``ROOT/<version>/saved_model/`` (signatures ``recommend`` by user id,
``recommend_history`` by explicit recent item ids, both the index's top ``k`` with nothing excluded, and
``recommend_unseen`` (user id, history, item ids to exclude, k): the top ``k`` items *not* excluded,
from the index while its candidates last, else by exact scoring over the whole catalog, so a user with
thousands of consumed items still gets ``k`` unseen ones), ``ROOT/<version>/users.npz`` (each known
user's recent history and every stored consumption, for the seen-item policy), ``ROOT/<version>/items.npz`` (item ids with their
two-tower vectors, for the re-ranker), ``ROOT/<version>/catalog.parquet`` (image paths, tags),
``ROOT/<version>/trend_clicks.parquet`` (the recent clicks the trend boost starts from),
``ROOT/<version>/model_card.json`` (the trend boost chosen in training among it); then ``ROOT/current`` (a text file naming the version) is
replaced last, so a reader never sees a half-written version.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from vistaste.data.embedding import load_vectors
from vistaste.data.io import atomic_path, dataset_relative, find_table, read_table
from vistaste.serving.index import IndexParams, build_index
from vistaste.serving.versions import CURRENT, TREND_CLICKS, current_version_dir, next_version, set_current  # noqa: F401  (re-exported)
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import PAD, ItemTable, latest_histories, positives
from vistaste.towers.inputs import user_inputs
from vistaste.towers.trained import TrainedTwoTower, find_vectors

PACKAGES = ("vistaste", "tensorflow-cpu", "tf-keras", "tensorflow-recommenders", "scann", "numpy", "pandas")


class RecommenderModule(tf.Module):
    """What the SavedModel holds: featurization by item id, the user tower and the ScaNN index."""

    def __init__(self, trained: TrainedTwoTower, table: ItemTable, index, user_ids: np.ndarray, user_histories: np.ndarray,
                 item_embeddings: np.ndarray):
        super().__init__()
        self.history_length = trained.config.history_length
        self.user_tower = trained.model.user_tower
        self.index = index
        self.item_embeddings = tf.Variable(item_embeddings.astype(np.float32), trainable=False, name="item_embeddings")
        self.item_ids = tf.Variable(table.ids.astype(str), trainable=False, name="item_ids")
        self.item_vectors = tf.Variable(table.vectors, trainable=False, name="item_features")
        self.item_tags = tf.Variable(table.tags, trainable=False, name="item_tags")
        self.user_histories = tf.Variable(user_histories.astype(np.int64), trainable=False, name="user_histories")
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(table.ids.astype(str)), tf.range(len(table), dtype=tf.int64)),
            default_value=PAD)
        self.user_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(np.asarray(user_ids).astype(str)), tf.range(len(user_ids), dtype=tf.int64)),
            default_value=-1)

    def _query(self, user_id, rows):
        return self.user_tower(user_inputs(user_id, rows, self.item_vectors, self.item_tags))

    def _search(self, user_id, rows):
        scores, ids = self.index(self._query(user_id, rows))
        return {"scores": scores, "item_ids": ids, "history_length": _history_length(rows)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def recommend(self, user_id):
        """Top candidates for known users, from the history stored at export (unknown users: empty history)."""
        row = self.user_rows.lookup(user_id)
        stored = tf.gather(self.user_histories, tf.maximum(row, 0))
        rows = tf.where((row >= 0)[:, None], stored, tf.fill(tf.shape(stored), tf.constant(PAD, tf.int64)))
        return self._search(user_id, rows)

    def _history_rows(self, history):
        rows = self.item_rows.lookup(history)
        # Keep the last `history_length` known items, right-aligned like training histories.
        known = rows != PAD
        order = tf.argsort(tf.cast(known, tf.int32) * (tf.range(tf.shape(rows)[1], dtype=tf.int32)[None, :] + 1), axis=1, stable=True)
        rows = tf.gather(rows, order, batch_dims=1)
        width = tf.shape(rows)[1]
        pad = tf.fill([tf.shape(rows)[0], tf.maximum(self.history_length - width, 0)], tf.constant(PAD, tf.int64))
        return tf.concat([pad, rows], axis=1)[:, -self.history_length:]

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def user_embedding(self, user_id, history):
        """The user tower's query vector for an explicit history (as ``recommend_history`` searches with)."""
        return {"embedding": self._query(user_id, self._history_rows(history))}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string)])
    def recommend_history(self, user_id, history):
        """Top candidates from an explicit history of item ids (oldest first, "" pads; unknown ids are ignored)."""
        return self._search(user_id, self._history_rows(history))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.string),
                                  tf.TensorSpec([None, None], tf.string), tf.TensorSpec([], tf.int32)])
    def recommend_unseen(self, user_id, history, exclude, k):
        """The top ``k`` items not in ``exclude`` ("" pads; unknown ids ignored) for an explicit history.

        The index's candidates are used while at least ``k`` of them survive the exclusion for every
        query; otherwise every item is scored exactly. Fewer than ``k`` unseen items in the whole
        catalog: the remaining slots hold item id "" and score -inf.
        """
        rows = self._history_rows(history)
        query = self._query(user_id, rows)
        batch, n_items = tf.shape(query, out_type=tf.int64)[0], tf.shape(self.item_embeddings, out_type=tf.int64)[0]
        excluded = self.item_rows.lookup(exclude)
        where = tf.where(excluded != PAD)
        hidden = tf.scatter_nd(tf.stack([where[:, 0], tf.gather_nd(excluded, where)], axis=1), tf.ones(tf.shape(where)[:1]),
                               tf.stack([batch, n_items])) > 0
        scores, ids = self.index(query)
        candidate_hidden = tf.gather(hidden, self.item_rows.lookup(ids), batch_dims=1)
        enough = tf.reduce_all(tf.reduce_sum(tf.cast(~candidate_hidden, tf.int32), axis=1) >= k)
        minus_inf = tf.constant(-np.inf, tf.float32)

        def from_index():
            top, position = tf.math.top_k(tf.where(candidate_hidden, minus_inf, scores), k)
            return top, tf.gather(ids, position, batch_dims=1)

        def exact():
            top, position = tf.math.top_k(tf.where(hidden, minus_inf, tf.matmul(query, self.item_embeddings, transpose_b=True)),
                                          tf.minimum(k, tf.cast(n_items, tf.int32)))
            return top, tf.gather(self.item_ids, position)

        top, top_ids = tf.cond(enough, from_index, exact)
        top_ids = tf.where(tf.math.is_inf(top), tf.constant("", tf.string), top_ids)
        return {"scores": top, "item_ids": top_ids, "history_length": _history_length(rows), "from_index": tf.fill([batch], enough)}


def _history_length(rows):
    return tf.reduce_sum(tf.cast(rows != PAD, tf.int32), axis=1)


def _package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export(model_dir: str | Path, dataset_dir: str | Path, root: str | Path, k: int = CANDIDATES, params: IndexParams | None = None,
           vectors_path: str | Path | None = None, metrics_path: str | Path | None = None, version: str | None = None) -> Path:
    """Export the trained model over the dataset's *whole current* catalog (new items included).

    Returns the version directory. ``root/current`` is updated last.
    """
    model_dir, dataset_dir, root = Path(model_dir), Path(dataset_dir), Path(root)
    trained = TrainedTwoTower.load(model_dir)
    vectors_file = Path(vectors_path) if vectors_path else find_vectors(dataset_dir)
    raw_ids, raw_vectors = load_vectors(vectors_file)
    catalog = read_table(find_table(dataset_dir, "catalog"))
    table = ItemTable.build(raw_ids, trained.project_vectors(raw_vectors), catalog)
    if table.tag_vocabulary != trained.table.tag_vocabulary:  # tags must mean what they meant in training
        table = dataclasses.replace(table, tags=_remap_tags(table, trained.table.tag_vocabulary),
                                    tag_vocabulary=trained.table.tag_vocabulary)
    item_vectors = trained.item_vectors(table)
    started = time.perf_counter()
    params = params or IndexParams.for_catalog(len(table), k)
    index = build_index(table.ids, item_vectors, k, params)
    build_seconds = time.perf_counter() - started

    logs = read_table(find_table(dataset_dir, "interactions"))
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    pos = positives(logs.assign(user_id=logs["user_id"].astype(str), item_id=logs["item_id"].astype(str)))
    rows = table.rows(pos["item_id"].to_numpy(), unknown="pad")
    users = np.array(sorted(pos["user_id"].unique()), dtype=object)
    histories = latest_histories(pos[rows != PAD], rows[rows != PAD], users, trained.config.history_length)
    module = RecommenderModule(trained, table, index, users, histories, item_vectors)

    version = version or next_version(root)
    final = root / version
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable")
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        tf.saved_model.save(module, str(tmp / "saved_model"),
                            signatures={"recommend": module.recommend, "recommend_history": module.recommend_history,
                                        "recommend_unseen": module.recommend_unseen, "user_embedding": module.user_embedding},
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
        recent = pos[(pos["timestamp"] >= pos["timestamp"].max() - pd.Timedelta(days=7)) & (rows != PAD)]
        popularity = np.bincount(table.rows(recent["item_id"].to_numpy()), minlength=len(table)) if len(recent) else np.zeros(len(table))
        # image_vectors (the projected pretrained embeddings) are what the re-ranker diversifies over:
        # varying how a taste looks costs far less relevance than varying the taste (benchmarks/rerank_tradeoff.py).
        np.savez(tmp / "items.npz", ids=table.ids.astype(str), vectors=item_vectors, image_vectors=table.vectors.astype(np.float32),
                 popularity=popularity.astype(np.float64))
        # Every stored positive (user index, item row, last time): the seen-item policy's record of the past.
        consumed = pos[rows != PAD].assign(row=rows[rows != PAD]).groupby(["user_id", "row"], sort=False)["timestamp"].max().reset_index()
        user_index = pd.Series(np.arange(len(users)), index=users)
        np.savez(tmp / "users.npz", ids=users.astype(str), histories=histories,
                 consumed_user=user_index[consumed["user_id"]].to_numpy(np.int64), consumed_row=consumed["row"].to_numpy(np.int64),
                 consumed_time=((consumed["timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy())
        keep = [c for c in ("item_id", "title", "name", "image_path", "tags", "created_at") if c in catalog]
        served = catalog[keep].copy()
        served["item_id"] = served["item_id"].astype(str)
        if "image_path" in served:
            served["image_path"] = [dataset_relative(dataset_dir, p) for p in served["image_path"]]  # never a server path
        served.to_parquet(tmp / "catalog.parquet", index=False)
        # The clicks the trend boost still feels at the end of the log (the model's chosen half-life):
        # serving's trends start from them and add live clicks, so a fresh service ranks as evaluated.
        trend = trained.trend
        recent_clicks = pos[pos["timestamp"] >= pos["timestamp"].max() - trend.memory()][["item_id", "timestamp"]]
        recent_clicks.reset_index(drop=True).to_parquet(tmp / TREND_CLICKS, index=False)
        card = {
            "version": version, "created": pd.Timestamp.now(tz="UTC").isoformat(), "packages": _package_versions(),
            "python": platform.python_version(),
            "training": {"config": dataclasses.asdict(trained.config),
                         "history": {k: v for k, v in trained.history.items() if k != "epochs"}},
            "data": {"dataset_dir": str(dataset_dir.resolve()), "vectors": str(vectors_file), "vectors_sha256": _fingerprint(vectors_file),
                     "interactions_sha256": _fingerprint(find_table(dataset_dir, "interactions")),
                     "items": len(table), "users_with_history": len(users)},
            "index": {**dataclasses.asdict(params), "k": k, "build_seconds": build_seconds},
            "metrics": json.loads(Path(metrics_path).read_text()) if metrics_path else None,
        }
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    set_current(root, version)
    return final


def _remap_tags(table: ItemTable, vocabulary: list[str]) -> np.ndarray:
    position = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(table), len(vocabulary)), np.float32)
    for j, tag in enumerate(table.tag_vocabulary):
        if tag in position:
            out[:, position[tag]] = table.tags[:, j]
    return out
