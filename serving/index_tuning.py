"""Tuning a built ScaNN index to a target recall: :func:`tune_index` picks the leaves searched and the
re-scoring depth that reach a target recall@k against exact search on a sample of queries, at the least
cost, and sets them on the index it built (:class:`vistaste.serving.index.CatalogScaNN` takes both per
query, so no rebuild). :func:`exact_rows` and :func:`recall_at_k` measure an index against brute force.
"""
from __future__ import annotations

import math
import time

import numpy as np
import tensorflow as tf

from vistaste.serving.index import CatalogScaNN, IndexParams, build_index
from vistaste.towers.config import CANDIDATES

TARGET_RECALL = 0.95  # recall@k against exact search that `tune_index` (and `vistaste export`) aims for
TUNING_QUERIES = 1000  # queries in the tuning sample: recall's standard error was then 0.0005-0.0055 (benchmarks)
# Cost of re-scoring one candidate exactly, in points scored by hashing: measured here (200k x 64, tree_ah, single
# queries on 2 cores) one more re-scored candidate cost ~68 ns and one more hashed point ~1.8 ns (ratio ~38).
REORDER_COST = 32


def exact_rows(queries: np.ndarray, item_vectors: np.ndarray, k: int, block: int = 1 << 24) -> np.ndarray:
    """The exact top-``k`` item rows ``[q, k]`` of each query by brute force (:func:`~vistaste.serving.index.exact_top_k`'s answer, with
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
               queries: np.ndarray | dict[str, np.ndarray] | None = None, *, base: IndexParams | None = None,
               n_queries: int = TUNING_QUERIES, query_noise: float = 0.25, seed: int = 0) -> tuple[CatalogScaNN, dict]:
    """Build the index and set its leaves searched and re-scoring depth to the cheapest that reach
    ``target_recall`` (recall@k against exact search, averaged over a sample of queries).

    A setting reaches the target when its mean recall on the sample, less one standard error, is at least
    ``target_recall``: the cheapest setting that clears the bar on a sample is one the sample favoured (the
    winner's curse), and without the margin fresh queries from the same distribution fell short of the
    target by 0.003-0.011 (20k clustered, 500 queries); the report has the standard error. With several
    query sources (``queries`` a dict, or real queries topped up with synthetic ones) the target holds for
    *each* source: a mean over the mix let easy queries carry hard ones (1M world items: 0.952 overall
    from synthetic 0.973 and known users 0.846, and 0.69 on held-out users with random histories).

    Returns ``(index, report)``: ``index.params`` are the chosen settings. The index tuned is the one
    returned, not rebuilt: ScaNN's k-means is not seeded, and two builds of the same 20k vectors measured
    recall 0.87 and 0.89 with one leaf searched, so only the tuned build has the recall measured.

    - ``base``: the searcher to tune (default ``IndexParams.for_catalog(n, k)``: its mode, leaves and the
      largest re-scoring depth tried, ``max(15k, 1000)``). Brute force (under ``BRUTE_FORCE_ITEMS``) is
      exact and returned untuned.
    - ``queries`` ``[q, d]``: real query vectors (user-tower outputs), or ``{source: [q_i, d]}`` for several
      kinds (``vistaste export``: known users' histories and random ones), together sampled down to
      ``n_queries`` (each source its share). When fewer are given (or none), the rest are *synthetic*: random
      catalog items plus Gaussian noise of ``query_noise`` times the catalog's per-coordinate spread. An item
      alone would be an easy query (its own best match, near its leaf's centre); a held-out item would need a
      second index, and the index tuned must be the one served. Synthetic queries are a stand-in: tuned on them to 0.95,
      fresh draws from the clusters measured 0.946-0.958 on clustered sets (tests/test_index_tuning.py,
      benchmarks/index_tuning.py). Real queries are better: ``vistaste export`` passes its known users' and
      new users' (random histories) as two sources.
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
    groups = {} if queries is None else dict(queries) if isinstance(queries, dict) else {"real": queries}
    for source, group in groups.items():
        if np.ndim(group) != 2 or np.shape(group)[1] != item_vectors.shape[1]:
            raise ValueError(f"queries ({source}) must be [q, {item_vectors.shape[1]}] like the item vectors, got {np.shape(group)}")
    if "synthetic" in groups:
        raise ValueError("'synthetic' names the queries tune_index adds itself; give the source another name")
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
    sampled = {}
    for i, (source, group) in enumerate(groups.items()):
        group = np.asarray(group, np.float32)
        share = n_queries * (i + 1) // len(groups) - n_queries * i // len(groups)
        sampled[source] = group[np.sort(rng.choice(len(group), share, replace=False))] if len(group) > share else group
    n_synthetic = n_queries - sum(len(g) for g in sampled.values())
    spread = float(np.sqrt(item_vectors[rng.choice(n, min(n, 10_000), replace=False)].var(axis=0).mean()))
    synthetic = item_vectors[rng.choice(n, n_synthetic)] + query_noise * spread * rng.normal(size=(n_synthetic, item_vectors.shape[1]))
    if n_synthetic:
        sampled["synthetic"] = synthetic.astype(np.float32)
    sample = np.concatenate(list(sampled.values()))
    bounds = np.cumsum([0] + [len(g) for g in sampled.values()])
    sources = {source: slice(bounds[i], bounds[i + 1]) for i, source in enumerate(sampled) if bounds[i + 1] > bounds[i]}
    truth = exact_rows(sample, item_vectors, index._k)
    searcher = index.searcher()
    trials: dict[tuple[int, int], tuple[float, float, bool, dict]] = {}

    def measure(leaves: int, reorder: int) -> tuple[float, float, bool, dict]:
        """(mean recall, its standard error, every query answered in full, {source: (mean, stderr)}) on the sample."""
        if (leaves, reorder) not in trials:
            found = index.search_rows(sample, leaves, reorder, searcher=searcher)
            recall = recall_at_k(found, truth)
            trials[leaves, reorder] = (*_mean_and_stderr(recall), bool((found >= 0).all()),
                                       {source: _mean_and_stderr(recall[rows]) for source, rows in sources.items()})
        return trials[leaves, reorder]

    def passes(leaves: int, reorder: int) -> bool:
        *_, full, by_source = measure(leaves, reorder)
        return full and all(recall - stderr >= target_recall for recall, stderr in by_source.values())

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
    fixed_recall, fixed_stderr, *_ = measure(*fixed)
    report.update(queries={**{source: len(g) for source, g in sampled.items() if source != "synthetic"}, "synthetic": n_synthetic,
                           "query_noise": query_noise, "seed": seed},
                  criterion="for each query source, mean recall minus its standard error >= target; every query answered in full",
                  trials=[{"num_leaves_to_search": leaves if tree else None, "reorder": reorder, "recall": round(recall, 5),
                           "recall_stderr": round(stderr, 5), "short_results": not full,
                           "recall_by_source": {source: round(mean, 5) for source, (mean, _) in by_source.items()}}
                          for (leaves, reorder), (recall, stderr, full, by_source) in trials.items()])
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
        recall_by_source={source: round(float(recall[rows].mean()), 5) for source, rows in sources.items()},
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
