"""ScaNN retrieval index over (item id, item vector) pairs, with parameters chosen by catalog size.

TFRS's ``factorized_top_k.ScaNN`` always builds a tree + asymmetric-hashing searcher; this subclass
keeps its (id, vector) indexing, search and SavedModel support but lets the searcher be brute force
for small catalogs, hashing + re-scoring for medium ones, and partitioning + hashing + re-scoring for
large ones (the ScaNN authors' rule of thumb), with every parameter overridable.
:func:`vistaste.serving.index_tuning.tune_index` then picks the leaves searched and the re-scoring depth
that reach a target recall@k against exact search on a sample of queries, at the least cost.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

try:  # one place for the optional heavy import; its ops must be registered before a SavedModel loads
    import scann  # noqa: F401
    from scann.scann_ops import scann_assets_pb2
    from scann.scann_ops.py import scann_ops, scann_ops_pybind
except ImportError as exc:  # pragma: no cover - scann is a pinned dependency
    raise ImportError("vistaste.serving needs scann==1.4.2 (pip install 'scann==1.4.2' with tensorflow-cpu~=2.20.0)") from exc

import tensorflow_recommenders as tfrs

from vistaste.towers.config import CANDIDATES

BRUTE_FORCE_ITEMS = 20_000  # below this many items the index is exact (brute force)
AH_ITEMS = 250_000  # below this, hashing + re-scoring over every item; above, partitioning first


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """How ScaNN searches. ``mode``: "brute_force", "ah" (hashing + reorder) or "tree_ah".

    ``num_leaves_to_search`` and ``reorder`` are passed with every query, so a built index can be re-tuned
    (:meth:`CatalogScaNN.set_search`, :func:`~vistaste.serving.index_tuning.tune_index`) without a rebuild."""

    mode: str = "brute_force"
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    dimensions_per_block: int = 2
    reorder: int = 0  # re-score this many candidates exactly (0: no re-scoring)
    training_sample_size: int = 100_000

    def __post_init__(self):
        if self.mode not in ("brute_force", "ah", "tree_ah"):
            raise ValueError(f"mode must be brute_force, ah or tree_ah, got {self.mode!r}")
        if self.mode == "tree_ah" and not 0 < self.num_leaves_to_search <= self.num_leaves:
            raise ValueError(f"tree_ah needs 0 < num_leaves_to_search <= num_leaves, got {self.num_leaves_to_search} and {self.num_leaves}")

    @classmethod
    def for_catalog(cls, n_items: int, k: int = CANDIDATES, **overrides) -> "IndexParams":
        """Brute force under 20k items; hashing + exact re-scoring under 250k; beyond, ~sqrt(n) leaves of
        which 12% are searched, then hashing + re-scoring. Measured (benchmarks/ann.py) to keep recall@100
        against exact search >= 0.95 on the built-in world's dense item vectors."""
        reorder = max(15 * k, 1000)
        if n_items < BRUTE_FORCE_ITEMS:
            params = cls("brute_force")
        elif n_items < AH_ITEMS:
            params = cls("ah", reorder=reorder)
        else:
            leaves = int(math.sqrt(n_items))
            params = cls("tree_ah", num_leaves=leaves, num_leaves_to_search=max(3 * leaves // 25, 10), reorder=reorder)
        return dataclasses.replace(params, **overrides)


class CatalogScaNN(tfrs.layers.factorized_top_k.ScaNN):
    """``tfrs.layers.factorized_top_k.ScaNN`` with a searcher built from :class:`IndexParams`."""

    def __init__(self, params: IndexParams, k: int = CANDIDATES, name: str | None = None):
        super().__init__(k=k, distance_measure="dot_product", parallelize_batch_searches=True, name=name)
        self.params = params
        self.searcher_name = ""  # set (unique) for an index that shares a SavedModel with others: see _searcher

        def build_searcher(candidates):
            builder = scann_ops.builder(db=candidates, num_neighbors=self._k, distance_measure="dot_product")
            if params.mode == "brute_force":
                builder = builder.score_brute_force()
            else:
                if params.mode == "tree_ah":
                    builder = builder.tree(num_leaves=params.num_leaves, num_leaves_to_search=params.num_leaves_to_search,
                                           training_sample_size=min(params.training_sample_size, int(candidates.shape[0])))
                builder = builder.score_ah(params.dimensions_per_block, anisotropic_quantization_threshold=0.2)
                if params.reorder:
                    builder = builder.reorder(params.reorder)
            return builder.build(shared_name=f"{self.name}/{uuid.uuid4()}")

        self._build_searcher = build_searcher

    def _search_options(self, params: IndexParams) -> dict:
        """Search-time settings: ScaNN accepts leaves searched and re-scoring depth per query, so a built
        index can be re-tuned without a rebuild (a rebuild would also re-partition: builds are not reproducible)."""
        if params.mode == "brute_force":
            return {}
        return {"leaves_to_search": params.num_leaves_to_search if params.mode == "tree_ah" else None,
                "pre_reorder_num_neighbors": params.reorder or None}

    def call(self, queries, k: int | None = None):
        """Scores and ids ``[batch, k]`` for query vectors ``[batch, d]`` (or ``[d]``), searched as ``self.params`` say."""
        k = k if k is not None else self._k
        if self._serialized_searcher is None:
            raise ValueError("The `index` method must be called first to create the retrieval index.")
        searcher = self._searcher() if self.searcher_name else scann_ops.searcher_from_module(self._serialized_searcher)
        if self.query_model is not None:
            queries = self.query_model(queries)
        options = self._search_options(self.params)
        if len(queries.shape) == 2:
            indices, distances = searcher.search_batched_parallel(queries, final_num_neighbors=k, **options)
        elif len(queries.shape) == 1:
            indices, distances = searcher.search(queries, final_num_neighbors=k, **options)
        else:
            raise ValueError(f"Queries must be of rank 2 or 1, got {len(queries.shape)}.")
        if self._identifiers is None:
            return distances, indices
        return distances, tf.gather(self._identifiers, indices)

    def _searcher(self):
        """The searcher re-created from its saved state under this index's own ``searcher_name``. ScaNN's
        ``searcher_from_module`` names the searcher resource after a node every index shares, so several
        indexes in one SavedModel (a sharded catalog, :mod:`vistaste.serving.shards`) would all search the
        first one's items. A named searcher stays in the process's resource manager until it exits (a
        hot reload does not free it), so a single index keeps ScaNN's own, unnamed path."""
        state = self._serialized_searcher
        return scann_ops.ScannSearcher(scann_ops.tensors_to_scann(
            state.dataset, state.scann_config, state.serialized_partitioner, state.datapoint_to_token, state.ah_codebook,
            state.hashed_dataset, state.int8_dataset, state.int8_multipliers, state.dp_norms, shared_name=self.searcher_name))

    def set_search(self, num_leaves_to_search: int, reorder: int) -> "CatalogScaNN":
        """Search this (already built) index with other leaves searched / re-scoring depth from now on."""
        params = dataclasses.replace(self.params, num_leaves_to_search=num_leaves_to_search, reorder=reorder)
        if params.mode == "brute_force":
            raise ValueError("a brute-force index has no search settings to change")
        self.params = params
        self._reset_tf_function_cache()
        return self

    def searcher(self):
        """The built ScaNN searcher (``search_batched_parallel(queries, final_num_neighbors, pre_reorder_num_neighbors,
        leaves_to_search)`` returns item *rows* and scores), for tuning and tests."""
        if self._serialized_searcher is None:
            raise ValueError("The `index` method must be called first to create the retrieval index.")
        return scann_ops.searcher_from_module(self._serialized_searcher)

    def search_rows(self, queries: np.ndarray, num_leaves_to_search: int | None = None, reorder: int | None = None,
                    searcher=None) -> np.ndarray:
        """Item rows ``[q, k]`` for queries ``[q, d]``, searched with the given settings (default: ``self.params``);
        a slot the searched leaves could not fill is -1 (ScaNN itself pads it with row 0 and a NaN score)."""
        params = self.params
        if self.params.mode != "brute_force":
            params = dataclasses.replace(self.params, num_leaves_to_search=num_leaves_to_search or params.num_leaves_to_search,
                                         reorder=reorder or params.reorder)
        searcher = searcher or self.searcher()
        rows, scores = searcher.search_batched_parallel(tf.constant(queries, tf.float32), final_num_neighbors=self._k,
                                                        **self._search_options(params))
        return np.where(np.isnan(scores.numpy()), -1, rows.numpy())


class DirectIndex:
    """A saved :class:`CatalogScaNN` searched from Python through scann's pybind searcher, one query at a time.

    Built from the index's saved searcher state (config, partitioner, codebook, codes and vectors), so it holds
    the same index and returns the same rows and scores as the SavedModel's ScaNN op, searched with the same
    settings; what it leaves out is TensorFlow's cost around the op (a signature call and the ops that rank its
    output): at 1M items that was most of a query (benchmarks/ann.py). Costs a second copy of the indexed
    vectors and codes in memory (~300 MB at 1M x 64).

    >>> direct = DirectIndex.from_index(saved_model.index, k=100, params=params)  # doctest: +SKIP
    >>> rows, scores = direct.search(query)  # query [d] float32 -> rows [k] into the indexed items, scores [k]  # doctest: +SKIP
    """

    def __init__(self, searcher, k: int, params: IndexParams):
        self.searcher = searcher
        self.k = k
        self.params = params
        # As CatalogScaNN._search_options (None: the searcher's own setting)
        self._leaves = params.num_leaves_to_search if params.mode == "tree_ah" else None
        self._reorder = params.reorder if params.mode != "brute_force" and params.reorder else None

    @classmethod
    def from_index(cls, index, k: int, params: IndexParams) -> "DirectIndex":
        """From a :class:`CatalogScaNN` in memory or in a loaded SavedModel (its ``_serialized_searcher``), searched
        for ``k`` items with ``params``' leaves and re-scoring depth (a SavedModel's: its model card's "index")."""
        with tempfile.TemporaryDirectory(prefix="vistaste-scann-") as scratch:
            return cls(load_pybind_searcher(index._serialized_searcher, Path(scratch)), k, params)

    def search(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``[k]`` (into the indexed items, in index order) and scores ``[k]``, best first, for one query vector ``[d]``;
        where the leaves searched hold fewer than ``k`` items ScaNN fills the rest with row 0 and a NaN score (the
        model's op returns fewer instead). Searched as a batch of one, as the model's op searches: ScaNN's
        single-query path differed from it in a score's last bit (tree_ah, 500 items), the batch path never."""
        rows, scores = self.searcher.search_batched(np.asarray(query, np.float32)[None], self.k, self._reorder, self._leaves)
        return rows[0], scores[0]


def load_pybind_searcher(state, directory: Path):
    """A pybind ``ScannSearcher`` from a TensorFlow searcher's saved state (``scann_ops.ScannState``: the tensors of
    ``scann_to_tensors``): the files ``ScannSearcher.serialize`` writes, written to ``directory`` and loaded
    (loading reads them into memory; the directory may go afterwards)."""
    directory = Path(directory).resolve()  # asset paths are read relative to the directory unless absolute
    directory.mkdir(parents=True, exist_ok=True)
    assets, kinds = scann_assets_pb2.ScannAssets(), scann_assets_pb2.ScannAsset
    (directory / "scann_config.pb").write_bytes(np.asarray(state.scann_config.numpy()).reshape(-1)[0])
    for name, kind in (("serialized_partitioner", kinds.PARTITIONER), ("ah_codebook", kinds.AH_CENTERS)):
        blob = np.asarray(getattr(state, name).numpy()).reshape(-1)
        if blob.size and blob[0]:
            (directory / f"{name}.pb").write_bytes(blob[0])
            assets.assets.append(kinds(asset_path=str(directory / f"{name}.pb"), asset_type=kind))
    for name, kind in (("datapoint_to_token", kinds.TOKENIZATION_NPY), ("hashed_dataset", kinds.AH_DATASET_NPY),
                       ("int8_dataset", kinds.INT8_DATASET_NPY), ("int8_multipliers", kinds.INT8_MULTIPLIERS_NPY),
                       ("dp_norms", kinds.INT8_NORMS_NPY), ("dataset", kinds.DATASET_NPY)):
        array = getattr(state, name).numpy()
        if array.ndim and array.size:  # an absent part is saved as an empty scalar
            np.save(directory / f"{name}.npy", array)
            assets.assets.append(kinds(asset_path=str(directory / f"{name}.npy"), asset_type=kind))
    (directory / "scann_assets.pbtxt").write_text(str(assets))
    return scann_ops_pybind.load_searcher(str(directory), assets_backcompat_shim=False)


def build_index(item_ids: np.ndarray, item_vectors: np.ndarray, k: int = CANDIDATES, params: IndexParams | None = None) -> CatalogScaNN:
    """Index item vectors (float32 [n, d]) under their ids; ``k`` is the number of candidates returned."""
    if len(item_ids) != len(item_vectors):
        raise ValueError(f"ids and vectors must align, got {len(item_ids)} and {len(item_vectors)}")
    if len(item_ids) == 0:
        raise ValueError("cannot index an empty catalog")
    params = params or IndexParams.for_catalog(len(item_ids), k)
    index = CatalogScaNN(params, k=min(k, len(item_ids)))
    index.index(tf.constant(item_vectors, tf.float32), tf.constant(np.asarray(item_ids).astype(str)))
    return index


def exact_top_k(queries: np.ndarray, item_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference answer: dot products + sort. Returns (scores [q, k], rows [q, k])."""
    scores = queries @ item_vectors.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows

