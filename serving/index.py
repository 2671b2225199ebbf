"""ScaNN retrieval index over (item id, item vector) pairs, with parameters chosen by catalog size or
tuned to a target recall.

TFRS's ``factorized_top_k.ScaNN`` always builds a tree + asymmetric-hashing searcher; this subclass
keeps its (id, vector) indexing, search and SavedModel support but lets the searcher be brute force
for small catalogs, hashing + re-scoring for medium ones, and partitioning + hashing + re-scoring for
large ones (the ScaNN authors' rule of thumb), with every parameter overridable. :func:`tune_index`
then picks the leaves searched and the re-scoring depth that reach a target recall@k against exact
search on a sample of queries, at the least cost.
"""
from __future__ import annotations

import dataclasses
import math
import time
import uuid

import numpy as np
import tensorflow as tf

try:  # one place for the optional heavy import; its ops must be registered before a SavedModel loads
    import scann  # noqa: F401
    from scann.scann_ops.py import scann_ops
except ImportError as exc:  # pragma: no cover - scann is a pinned dependency
    raise ImportError("vistaste.serving needs scann==1.4.2 (pip install 'scann==1.4.2' with tensorflow-cpu~=2.20.0)") from exc

import tensorflow_recommenders as tfrs

from vistaste.towers.config import CANDIDATES

BRUTE_FORCE_ITEMS = 20_000  # below this many items the index is exact (brute force)
AH_ITEMS = 250_000  # below this, hashing + re-scoring over every item; above, partitioning first
TARGET_RECALL = 0.95  # recall@k against exact search that `tune_index` (and `vistaste export`) aims for
TUNING_QUERIES = 1000  # queries in the tuning sample: recall's standard error was then 0.0005-0.0055 (benchmarks)
# Cost of re-scoring one candidate exactly, in points scored by hashing: measured here (200k x 64, tree_ah, single
# queries on 2 cores) one more re-scored candidate cost ~68 ns and one more hashed point ~1.8 ns (ratio ~38).
REORDER_COST = 32


@dataclasses.dataclass(frozen=True)
class IndexParams:
    """How ScaNN searches. ``mode``: "brute_force", "ah" (hashing + reorder) or "tree_ah".

    ``num_leaves_to_search`` and ``reorder`` are passed with every query, so a built index can be re-tuned
    (:meth:`CatalogScaNN.set_search`, :func:`tune_index`) without a rebuild."""

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


def exact_rows(queries: np.ndarray, item_vectors: np.ndarray, k: int, block: int = 1 << 24) -> np.ndarray:
    """The exact top-``k`` item rows ``[q, k]`` of each query by brute force (``exact_top_k``'s answer, with
    ``tf.math.top_k`` for the selection: 2.5x faster than numpy's argpartition at 200k items), scoring at most
    ``block`` (query, item) pairs at a time so 1M items do not need a [q, 1M] matrix."""
    n = len(item_vectors)
    k = min(k, n)
    step = max(1, block // n)
    items = tf.constant(item_vectors, tf.float32)
    out = [tf.math.top_k(tf.matmul(tf.constant(queries[s:s + step], tf.float32), items, transpose_b=True), k).indices.numpy()
           for s in range(0, len(queries), step)]
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def recall_at_k(found_rows: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per-query recall ``[q]``: the share of each query's exact rows ``[q, k]`` among its found rows ``[q, k']`` (-1: none).

    >>> recall_at_k(np.array([[0, 1], [2, -1]]), np.array([[1, 0], [2, 3]])).tolist()
    [1.0, 0.5]
    """
    width = max(int(found_rows.max(initial=0)), int(exact.max(initial=0))) + 2
    offset = np.arange(len(exact))[:, None] * width
    hits = np.isin(exact + offset, np.where(found_rows >= 0, found_rows + offset, -1))
    return hits.mean(axis=1)


def tune_index(item_ids: np.ndarray, item_vectors: np.ndarray, k: int = CANDIDATES, target_recall: float = TARGET_RECALL,
               queries: np.ndarray | None = None, *, base: IndexParams | None = None, n_queries: int = TUNING_QUERIES,
               query_noise: float = 0.25, seed: int = 0) -> tuple[CatalogScaNN, dict]:
    """Build the index and set its leaves searched and re-scoring depth to the cheapest that reach
    ``target_recall`` (recall@k against exact search, averaged over a sample of queries).

    A setting reaches the target when its mean recall on the sample, less one standard error, is at least
    ``target_recall``: the cheapest setting that clears the bar on a sample is one the sample favoured (the
    winner's curse), and without the margin fresh queries from the same distribution fell short of the
    target by 0.003-0.011 (20k clustered, 500 queries); the report has the standard error.

    Returns ``(index, report)``: ``index.params`` are the chosen settings. The index tuned is the one
    returned, not rebuilt: ScaNN's k-means is not seeded, and two builds of the same 20k vectors measured
    recall 0.87 and 0.89 with one leaf searched, so only the tuned build has the recall measured.

    - ``base``: the searcher to tune (default ``IndexParams.for_catalog(n, k)``: its mode, leaves and the
      largest re-scoring depth tried, ``max(15k, 1000)``). Brute force (under ``BRUTE_FORCE_ITEMS``) is
      exact and returned untuned.
    - ``queries`` ``[q, d]``: real query vectors (user-tower outputs), sampled down to ``n_queries``. When
      fewer are given (or none), the rest are *synthetic*: random catalog items plus Gaussian noise of
      ``query_noise`` times the catalog's per-coordinate spread. An item alone would be an easy query
      (its own best match, near its leaf's centre); a held-out item would need a second index, and the
      index tuned must be the one served. Synthetic queries are a stand-in: tuned on them to 0.95,
      fresh draws from the clusters measured 0.946-0.958 on clustered sets (tests/test_index_tuning.py,
      benchmarks/index_tuning.py). Real queries are better: ``vistaste export`` passes its users'.
    - Cost model: a setting costs the points it scores by hashing (``n * leaves / num_leaves`` for
      tree_ah, ``n`` for ah) plus ``REORDER_COST`` per re-scored candidate. ah: the smallest re-scoring
      depth that reaches the target. tree_ah: for each depth on a grid (k, 1.5k, 2k, 3k, 5k, 10k, max)
      the fewest leaves reaching the target (galloping + bisection, from the previous depth's answer,
      stopping where the cost exceeds the best so far), the cheapest of those, then its depth bisected
      down to the smallest that still reaches the target at those leaves. A setting passes only if no
      sample query came back short (fewer than k items in the searched leaves), and tree_ah searches on
      average at least 2k points. If even every leaf at the largest depth misses the target, the index is
      brute force (exact).
    - Deterministic given the index (seeded query sample; settings compared by the cost model, not by
      timing). Latency (``ms_per_query``, single queries, best of 3 rounds) is measured and reported
      beside today's fixed setting, never used to choose.

    Cost: the one build, exact top-k of the sample (``n_queries * n * d`` multiply-adds, in blocks), and
    batched searches of the sample: for tree_ah at most 7 * (2 log2(num_leaves) + 2) + log2(max depth) + 3
    (11-27 for targets 0.9-0.99 on 200k clustered items); for ah at most log2(max depth) + 3. Measured on 2
    cores shared with other jobs: 20k x 32, 1-2 s of tuning beside a 0.3-0.5 s build; 200k x 64
    (benchmarks/index_tuning.py), 5-6 s for tree_ah and 9-12 s for ah (every search scores every item)
    beside a 5-9 s build.

    >>> rng = np.random.default_rng(0)
    >>> vectors = rng.normal(size=(30_000, 16)).astype(np.float32)
    >>> index, report = tune_index(np.arange(30_000), vectors, k=10, target_recall=0.9)  # doctest: +SKIP
    >>> report["recall"] >= 0.9, index.params.mode  # doctest: +SKIP
    (True, 'ah')
    """
    item_vectors = np.asarray(item_vectors, np.float32)
    n = len(item_vectors)
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if n_queries < 1:
        raise ValueError(f"n_queries must be positive, got {n_queries}")
    if queries is not None and (np.ndim(queries) != 2 or np.shape(queries)[1] != item_vectors.shape[1]):
        raise ValueError(f"queries must be [q, {item_vectors.shape[1]}] like the item vectors, got {np.shape(queries)}")
    base = base or IndexParams.for_catalog(n, k)
    if base.mode != "brute_force" and base.reorder < min(k, n):
        raise ValueError(f"tuning re-scores up to base.reorder candidates, which must be >= k ({min(k, n)}), got {base.reorder}")
    started = time.perf_counter()
    index = build_index(item_ids, item_vectors, k, base)
    build_seconds = time.perf_counter() - started
    report = {"target_recall": target_recall, "k": index._k, "build_seconds": round(build_seconds, 3)}
    if base.mode == "brute_force":
        return index, {**report, "tuned": False, "reason": "brute force is exact", "recall": 1.0}

    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    real = np.zeros((0, item_vectors.shape[1]), np.float32) if queries is None else np.asarray(queries, np.float32)
    if len(real) > n_queries:
        real = real[np.sort(rng.choice(len(real), n_queries, replace=False))]
    n_synthetic = n_queries - len(real)
    spread = float(np.sqrt(item_vectors[rng.choice(n, min(n, 10_000), replace=False)].var(axis=0).mean()))
    synthetic = item_vectors[rng.choice(n, n_synthetic)] + query_noise * spread * rng.normal(size=(n_synthetic, item_vectors.shape[1]))
    sample = np.concatenate([real, synthetic.astype(np.float32)])
    truth = exact_rows(sample, item_vectors, index._k)
    searcher = index.searcher()
    trials: dict[tuple[int, int], tuple[float, float, bool]] = {}

    def measure(leaves: int, reorder: int) -> tuple[float, float, bool]:
        """(mean recall, its standard error, every query answered in full) on the sample."""
        if (leaves, reorder) not in trials:
            found = index.search_rows(sample, leaves, reorder, searcher=searcher)
            trials[leaves, reorder] = (*_mean_and_stderr(recall_at_k(found, truth)), bool((found >= 0).all()))
        return trials[leaves, reorder]

    def passes(leaves: int, reorder: int) -> bool:
        recall, stderr, full = measure(leaves, reorder)
        return full and recall - stderr >= target_recall

    k_eff, max_reorder = index._k, max(base.reorder, index._k)
    tree = base.mode == "tree_ah"
    num_leaves = base.num_leaves if tree else 1
    floor = min(num_leaves, math.ceil(2 * k_eff * num_leaves / n)) if tree else 1

    def cost(leaves: int, reorder: int) -> float:
        return n * leaves / num_leaves + REORDER_COST * reorder

    def fewest_leaves(reorder: int, start: int, limit: float) -> int | None:
        """Smallest leaves >= floor reaching the target at this depth (None: not below cost ``limit``)."""
        fail, probe, step = floor - 1, max(start, floor), 1
        while not passes(probe, reorder):  # gallop up
            fail = probe
            if probe == num_leaves or cost(probe + 1, reorder) >= limit:
                return None
            probe, step = min(num_leaves, probe + step), step * 2
        if probe == start and probe > floor:  # passed at once: gallop down to a failing count
            step = 1
            while fail < probe - 1:
                below = max(floor, probe - step)
                if not passes(below, reorder):
                    fail = below
                    break
                probe, step = below, step * 2
                if probe == floor:
                    break
        return _smallest_passing(fail, probe, lambda leaves: passes(leaves, reorder))

    def smallest_reorder(leaves: int, high: int) -> int:
        # below k nothing is re-scored to k results: k - 1 is treated as failing
        return _smallest_passing(k_eff - 1, high, lambda reorder: passes(leaves, reorder))

    if tree:
        grid = sorted({min(max_reorder, max(k_eff, int(m * k_eff))) for m in (1, 1.5, 2, 3, 5, 10)} | {max_reorder}, reverse=True)
        best, start = None, floor
        for reorder in grid:
            limit = cost(*best) if best else math.inf
            if cost(floor, reorder) >= limit:
                continue
            leaves = fewest_leaves(reorder, start, limit)
            if leaves is None:
                if best is None:
                    break  # every leaf at the largest depth misses the target
                continue
            start = leaves
            if best is None or cost(leaves, reorder) < cost(*best):
                best = (leaves, reorder)
        if best is not None:
            leaves, reorder = best
            reorder = smallest_reorder(leaves, reorder)
            while leaves > floor and passes(leaves - 1, reorder):  # recall is only nearly monotone in leaves
                leaves -= 1
            if leaves > floor:
                measure(leaves - 1, reorder)  # on record: one leaf fewer misses the target
            best = (leaves, reorder)
    else:
        best = (1, smallest_reorder(1, max_reorder)) if passes(1, max_reorder) else None

    fixed = (base.num_leaves_to_search if tree else 1, base.reorder)
    fixed_recall, fixed_stderr, _ = measure(*fixed)
    report.update(queries={"real": len(real), "synthetic": n_synthetic, "query_noise": query_noise, "seed": seed},
                  criterion="mean recall on the sample minus its standard error >= target, every query answered in full",
                  trials=[{"num_leaves_to_search": leaves if tree else None, "reorder": reorder, "recall": round(recall, 5),
                           "recall_stderr": round(stderr, 5), "short_results": not full}
                          for (leaves, reorder), (recall, stderr, full) in trials.items()])
    if best is None:
        index = build_index(item_ids, item_vectors, k, IndexParams("brute_force"))
        report.update(tuned=True, reason=f"target not reached with every leaf searched and re-scoring {max_reorder}: brute force",
                      recall=1.0, fixed={"num_leaves_to_search": fixed[0] if tree else None, "reorder": fixed[1],
                                         "recall": round(fixed_recall, 5)}, tune_seconds=round(time.perf_counter() - started, 3))
        return index, report
    leaves, reorder = best
    recall = recall_at_k(index.search_rows(sample, leaves, reorder, searcher=searcher), truth)
    timing = sample[:100]
    report.update(
        tuned=True, num_leaves_to_search=leaves if tree else None, reorder=reorder, recall=round(float(recall.mean()), 5),
        recall_stderr=round(_mean_and_stderr(recall)[1], 5),
        recall_by_source={"real": round(float(recall[:len(real)].mean()), 5) if len(real) else None,
                          "synthetic": round(float(recall[len(real):].mean()), 5) if n_synthetic else None},
        ms_per_query=_ms_per_query(searcher, timing, k_eff, leaves if tree else None, reorder),
        floor_leaves=floor if tree else None, scored_share=round(leaves / num_leaves, 5) if tree else 1.0,
        fixed={"num_leaves_to_search": fixed[0] if tree else None, "reorder": fixed[1], "recall": round(fixed_recall, 5),
               "recall_stderr": round(fixed_stderr, 5),
               "ms_per_query": _ms_per_query(searcher, timing, k_eff, fixed[0] if tree else None, fixed[1])},
        searches=len(trials), tune_seconds=round(time.perf_counter() - started, 3))
    index.set_search(leaves if tree else base.num_leaves_to_search, reorder)
    return index, report


def _smallest_passing(failing: int, passing: int, passes) -> int:
    """Bisection: the smallest value in ``(failing, passing]`` for which the monotone ``passes`` holds,
    given that it fails at ``failing`` and holds at ``passing``."""
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return passing


def _mean_and_stderr(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (0 for a single value)."""
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(values.mean()), stderr


def _ms_per_query(searcher, queries: np.ndarray, k: int, leaves: int | None, reorder: int, rounds: int = 3) -> float:
    """Single-query latency through the searcher (best of ``rounds`` passes over ``queries``): reported, never compared."""
    singles = [tf.constant(q) for q in queries]
    best = math.inf
    for _ in range(rounds):
        started = time.perf_counter()
        for query in singles:
            searcher.search(query, final_num_neighbors=k, pre_reorder_num_neighbors=reorder, leaves_to_search=leaves)
        best = min(best, (time.perf_counter() - started) / max(1, len(singles)))
    return round(best * 1e3, 4)
