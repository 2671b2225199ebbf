"""`vistaste export`: one versioned SavedModel directory with the user tower and a ScaNN index.

Layout (like TF Serving's): ``ROOT/<version>/saved_model/`` with signatures (computed by
:class:`vistaste.serving.saved_model.RecommenderModule`)

- ``recommend`` (user ids) and ``recommend_history`` (user ids, explicit histories): the top ``k``,
  nothing excluded;
- ``recommend_unseen`` (user ids, histories, item ids to exclude, k): the top ``k`` not excluded, so a
  user with thousands of consumed items still gets ``k`` unseen ones;
- ``candidates`` (same inputs): ``recommend_unseen`` by the model's scores alone, for a live re-ranker;
- ``candidates_by_query`` (query vectors, item ids to exclude, k): ``candidates`` from a query vector
  already computed, the retrieval stage alone;
- ``user_embedding`` (user ids, histories): the query vector.

The three ``recommend*`` rank exactly as ``vistaste evaluate`` measures the model: the trend boost chosen
in training lifts each user's ``CANDIDATES`` best unconsumed items by the trends at the end of the
exported log (outputs ``scores`` (the ranking), ``relevance`` (the model's), ``trend``); from the index
while it holds them, else by exact scoring over the whole catalog.

Beside it: ``ROOT/<version>/users.npz`` (each known user's recent history and every stored consumption,
for the seen-item policy), ``items.npz`` (item ids with their two-tower vectors, for the re-ranker),
``catalog.parquet`` (image paths, tags), ``trend_clicks.parquet`` (the recent clicks the trend boost
starts from), ``model_card.json`` (the trend boost chosen in training among it); then ``ROOT/current``
(a text file naming the version) is replaced last, so a reader never sees a half-written version.
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

from vistaste.data.embedding import EMBEDDINGS_FILE, MANIFEST_FILE, load_vectors, read_manifest
from vistaste.data.io import atomic_path, dataset_relative, find_table, read_table
from vistaste.data.trends import catalog_tags, recent_popularity
from vistaste.serving.index import IndexParams, build_index
from vistaste.serving.index_tuning import TARGET_RECALL, TUNING_QUERIES, tune_index
from vistaste.serving.saved_model import RecommenderModule
from vistaste.serving.shards import build_sharded_index
from vistaste.serving.versions import CURRENT, TREND_CLICKS, current_version_dir, next_version, set_current  # noqa: F401  (re-exported)
from vistaste.towers.collaborative import content
from vistaste.towers.config import CANDIDATES
from vistaste.towers.features import PAD, ItemTable, latest_histories, positives
from vistaste.towers.inputs import user_inputs
from vistaste.towers.trained import TrainedTwoTower, find_vectors

PACKAGES = ("vistaste", "tensorflow-cpu", "tf-keras", "tensorflow-recommenders", "scann", "numpy", "pandas")


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


def _vectors_backbone(vectors_file: Path, shape: tuple[int, int]) -> dict | None:
    """Which backbone produced the item vectors, from the manifest `vistaste embed` writes beside them
    (``embeddings.manifest.json`` next to ``embeddings.parquet``): name, weights hash (the cache key is the
    name plus its first 12 hex digits), preprocessing, PCA if any and, for a ``finetuned:`` backbone, the
    fine-tuning fields. ``None`` for vectors brought without a manifest. ``matches_vectors`` says whether
    the manifest's count and dim are the vectors' (False: the vectors were replaced after embedding)."""
    if vectors_file.name != EMBEDDINGS_FILE or not (vectors_file.parent / MANIFEST_FILE).is_file():
        return None
    manifest = read_manifest(vectors_file.parent)
    keep = ("backbone", "weights_sha256", "image_size", "preprocessing", "dim", "pca", "backbone_dir", "finetune")
    return {**{key: manifest[key] for key in keep if key in manifest},
            "matches_vectors": (manifest.get("count"), manifest.get("dim")) == tuple(shape)}


def export(model_dir: str | Path, dataset_dir: str | Path, root: str | Path, k: int = CANDIDATES, params: IndexParams | None = None,
           vectors_path: str | Path | None = None, metrics_path: str | Path | None = None, version: str | None = None,
           target_recall: float | None = TARGET_RECALL, shards: int = 1) -> Path:
    """Export the trained model over the dataset's *whole current* catalog (new items included).

    Without ``params``, a catalog past brute force gets its leaves searched and re-scoring depth tuned to
    ``target_recall`` (recall@k of the index against exact search) on ``TUNING_QUERIES`` query vectors, half
    known users' and half new users' random histories, each half to the target (``_user_queries``,
    ``vistaste.serving.index_tuning.tune_index``); the model card's "index" records the measured recall (per
    source too) and latency. ``target_recall=None`` keeps the parameters chosen by catalog size.

    ``shards`` > 1 splits the catalog into that many indexes by a stable hash of the item id
    (:mod:`vistaste.serving.shards`), each built (and tuned) on its own items, queried together and
    merged to the global top; the card's "index" then describes the first shard.

    Returns the version directory. ``root/current`` is updated last.
    """
    if target_recall is not None and not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
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
    trend = trained.trend
    # With a trend boost the index returns the boost's candidates beyond the k asked for, so the SavedModel
    # ranks from it unless a user consumed many of the best items (then it scores exactly).
    index_k = k + CANDIDATES if trend.weight else k

    logs = read_table(find_table(dataset_dir, "interactions"))
    logs["timestamp"] = pd.to_datetime(logs["timestamp"], utc=True)
    pos = positives(logs.assign(user_id=logs["user_id"].astype(str), item_id=logs["item_id"].astype(str)))
    rows = table.rows(pos["item_id"].to_numpy(), unknown="pad")
    users = np.array(sorted(pos["user_id"].unique()), dtype=object)
    histories = latest_histories(pos[rows != PAD], rows[rows != PAD], users, trained.config.history_length)
    # Every stored positive (user, item row, last time): the seen-item policy's record of the past.
    consumed = pos[rows != PAD].assign(row=rows[rows != PAD]).groupby(["user_id", "row"], sort=False)["timestamp"].max().reset_index()
    user_index = pd.Series(np.arange(len(users)), index=users)
    consumed_user = user_index[consumed["user_id"]].to_numpy(np.int64)
    by_user = np.argsort(consumed_user, kind="stable")
    splits = np.searchsorted(consumed_user[by_user], np.arange(len(users) + 1))
    consumed_rows = consumed["row"].to_numpy(np.int64)[by_user]
    consumed_lists = [consumed_rows[splits[u]:splits[u + 1]] for u in range(len(users))]
    started = time.perf_counter()
    tuned = []

    def build(ids, vectors, top):
        if params is None and target_recall is not None and IndexParams.for_catalog(len(ids), top).mode != "brute_force":
            built, report = tune_index(ids, vectors, top, target_recall, _user_queries(trained, table, users, histories, consumed_lists))
            tuned.append(report)
            return built
        return build_index(ids, vectors, top, params or IndexParams.for_catalog(len(ids), top))

    if shards > 1:  # each shard built (and tuned) on its own items; the merge keeps the global top index_k
        index, _ = build_sharded_index(table.ids, item_vectors, index_k, shards, build=build)
        params = index.params[0]
    else:
        index = build(table.ids, item_vectors, index_k)
        params = index.params
    tuning = None if not tuned else tuned[0] if shards == 1 else {"shards": tuned, "recall": min(t["recall"] for t in tuned)}
    build_seconds = time.perf_counter() - started
    # The clicks the trend boost still feels at the end of the log (the model's chosen half-life), and
    # every item's trend there: the SavedModel ranks by these; the service starts from them and adds live clicks.
    recent_clicks = pos[pos["timestamp"] >= pos["timestamp"].max() - trend.memory()][["item_id", "timestamp"]].reset_index(drop=True)
    keep = [c for c in ("item_id", "title", "name", "image_path", "tags", "created_at") if c in catalog]
    served = catalog[keep].copy()
    served["item_id"] = served["item_id"].astype(str)
    item_trend = (trend.catalog_scores(recent_clicks, pos["timestamp"].max(), table.ids, catalog_tags(served))
                  if trend.weight and len(pos) else np.zeros(len(table)))
    module = RecommenderModule(trained, table, index, users, histories, item_vectors, consumed=consumed_lists, item_trend=item_trend, k=k)

    version = version or next_version(root)
    final = root / version
    if final.exists():
        raise FileExistsError(f"{final} already exists; versions are immutable")
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        tf.saved_model.save(module, str(tmp / "saved_model"),
                            signatures={"recommend": module.recommend, "recommend_history": module.recommend_history,
                                        "recommend_unseen": module.recommend_unseen, "candidates": module.candidates,
                                        "candidates_by_query": module.candidates_by_query, "user_embedding": module.user_embedding},
                            options=tf.saved_model.SaveOptions(namespace_whitelist=["Scann"]))
        popularity = recent_popularity(rows, pos["timestamp"], len(table))  # the popular fallback's ranking
        # image_vectors (the projected pretrained embeddings) are what the re-ranker diversifies over:
        # varying how a taste looks costs far less relevance than varying the taste (benchmarks/rerank_tradeoff.py).
        np.savez(tmp / "items.npz", ids=table.ids.astype(str), vectors=item_vectors, image_vectors=table.vectors.astype(np.float32),
                 popularity=popularity.astype(np.float64))
        np.savez(tmp / "users.npz", ids=users.astype(str), histories=histories,
                 consumed_user=consumed_user, consumed_row=consumed["row"].to_numpy(np.int64),
                 consumed_time=((consumed["timestamp"] - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy())
        if "image_path" in served:
            served["image_path"] = [dataset_relative(dataset_dir, p) for p in served["image_path"]]  # never a server path
        served.to_parquet(tmp / "catalog.parquet", index=False)
        recent_clicks.to_parquet(tmp / TREND_CLICKS, index=False)
        card = {
            "version": version, "created": pd.Timestamp.now(tz="UTC").isoformat(), "packages": _package_versions(),
            "python": platform.python_version(),
            "training": {"config": dataclasses.asdict(trained.config),
                         "history": {k: v for k, v in trained.history.items() if k != "epochs"}},
            "data": {"dataset_dir": str(dataset_dir.resolve()), "vectors": str(vectors_file), "vectors_sha256": _fingerprint(vectors_file),
                     "backbone": _vectors_backbone(vectors_file, raw_vectors.shape),
                     "interactions_sha256": _fingerprint(find_table(dataset_dir, "interactions")),
                     "items": len(table), "users_with_history": len(users)},
            "index": {**dataclasses.asdict(params), "k": k, "index_k": index_k, "shards": shards, "build_seconds": build_seconds,
                      "target_recall": target_recall if tuning else None, "recall": tuning["recall"] if tuning else None,
                      "ms_per_query": tuning.get("ms_per_query") if tuning else None, "tuning": tuning},
            "metrics": json.loads(Path(metrics_path).read_text()) if metrics_path else None,
        }
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
    set_current(root, version)
    return final


def _user_queries(trained: TrainedTwoTower, table: ItemTable, users: np.ndarray, histories: np.ndarray, consumed: list[np.ndarray],
                  n: int = TUNING_QUERIES, seed: int = 0) -> dict[str, np.ndarray]:
    """The queries the index is tuned on, as ``recommend`` computes them (seeded samples of up to ``n`` each):
    ``known users``: stored users from their stored histories; ``new histories``: unknown users whose
    histories are 1 to ``history_length`` catalog items drawn uniformly, standing in for users the log has
    not met (a known user's query sits where the log's clicks are; one from anywhere in the catalog can sit
    where none are, and the index must answer it as well)."""
    rng = np.random.default_rng(seed)
    queries = {}
    if len(users):
        pick = np.sort(rng.choice(len(users), min(n, len(users)), replace=False))
        queries["known users"] = _with_collaborative(trained, table, trained.model.user_tower(
            user_inputs(users[pick].astype(str), histories[pick], table.vectors, table.tags)).numpy(), [consumed[u] for u in pick])
    length = trained.config.history_length
    drawn = rng.integers(0, len(table), (n, length))
    drawn[np.arange(length)[None, :] < length - rng.integers(1, length + 1, n)[:, None]] = PAD  # PAD-left, 1..length items
    # user id "": out of the id vocabulary, served by history alone (one call, as for the known users above)
    queries["new histories"] = _with_collaborative(trained, table, trained.model.user_tower(
        user_inputs(np.full(n, ""), drawn, table.vectors, table.tags)).numpy(), list(drawn))
    return queries


def _with_collaborative(trained: TrainedTwoTower, table: ItemTable, towers: np.ndarray, consumed: list[np.ndarray]) -> np.ndarray:
    """Tower queries completed as ``TrainedTwoTower.user_vectors`` completes them, over ``table``'s rows."""
    if trained.collaborative is None:
        return towers
    return trained.collaborative.aligned(table.ids, content(table)).user_part(towers, consumed)


def _remap_tags(table: ItemTable, vocabulary: list[str]) -> np.ndarray:
    position = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(table), len(vocabulary)), np.float32)
    for j, tag in enumerate(table.tag_vocabulary):
        if tag in position:
            out[:, position[tag]] = table.tags[:, j]
    return out
