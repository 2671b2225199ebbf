"""`vistaste embed`: every catalog image -> one vector, incremental, resumable and atomic.

Pipeline, one pass: I/O threads read batches of catalog files ahead (each file is read once) -> one
worker per core takes a batch, hashes each file, looks the hash up in the cache (keyed by content hash
and the backbone's ``cache_key``), and decodes/resizes and embeds the misses, so one core's decoding
overlaps the other's inference -> the main thread stores new vectors in the cache in atomic shards of
~1024 rows (so a killed run resumes) -> streams ``embeddings.parquet`` (``item_id, vector``) and writes
``embeddings.manifest.json`` and ``embedding_errors.csv``. Images that cannot be used are reported
with item id, path and reason; never a silent zero vector. Image paths that leave the dataset directory
(absolute, ``..``, a symlink pointing out) are refused with a reason and never opened.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from vistaste.data.embedding_cache import EmbeddingCache
from vistaste.data.images import ImageError, content_hash, decode_image, decode_rgb, load_image, read_image_file  # noqa: F401  (re-exported)
from vistaste.data.io import (
    DatasetPathError,
    VectorTableWriter,
    find_table,
    read_table,
    resolve_all_inside,
    write_json,
    write_table,
)
from vistaste.data.vectors import load_vectors  # noqa: F401  (re-exported)

EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "embeddings.manifest.json"
ERRORS_FILE = "embedding_errors.csv"
EMBED_BATCH = 16  # images per inference batch, in the local and the Beam pipeline


def bounded_map(fn: Callable, items: Iterable, pool: ThreadPoolExecutor, window: int) -> Iterator:
    """Like ``pool.map`` but keeps at most ``window`` tasks in flight, so memory stays flat on huge
    catalogs (``Executor.map`` submits everything at once)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclasses.dataclass
class EmbedResult:
    embedded: int
    cached: int
    failed: int
    seconds: float
    images_per_second: float
    output: Path
    errors: pd.DataFrame


def _read_unit(rows: list[tuple[str, Path]]) -> list[tuple[str, Path, bytes | ImageError]]:
    """Read a unit's files (I/O only: threads blocked on a cold disk do not hold a core)."""
    out = []
    for item_id, path in rows:
        try:
            out.append((item_id, path, read_image_file(path)))
        except ImageError as exc:
            out.append((item_id, path, exc))
    return out


def _hash_decode_embed(backbone, known: Callable[[str], bool], unit: list[tuple[str, Path, bytes | ImageError]]):
    """One unit of compute for one worker: hash each file's bytes, and decode and embed only the images
    whose hash is not ``known`` (cached). Returns ``(outcomes, new_keys, vectors)`` with one
    ``(item_id, path, key, reason)`` outcome per row (key None and a reason when the image failed).
    Workers run whole units, so one core's decoding overlaps the other's inference with no hand-off."""
    outcomes, new_keys, pixels = [], [], []
    for item_id, path, data in unit:
        try:
            if isinstance(data, ImageError):
                raise data
            key = content_hash(data)
            if not known(key) and key not in new_keys:  # identical files in one unit are embedded once
                pixels.append(decode_image(data, backbone.image_size))
                new_keys.append(key)
            outcomes.append((item_id, path, key, None))
        except ImageError as exc:
            outcomes.append((item_id, path, None, str(exc)))
    return outcomes, new_keys, backbone.embed(np.stack(pixels)) if pixels else None


def _fit_pca(cache: EmbeddingCache, keys: list[str], dim: int, whiten: bool, max_rows: int):
    """PCA fitted on at most ``max_rows`` randomly chosen catalog vectors, so memory stays bounded; the
    leading components of 1280-d image features are stable long before 25k samples."""
    from vistaste.data.pca import VectorPCA

    rows = np.sort(np.random.default_rng(0).choice(len(keys), min(max_rows, len(keys)), replace=False))
    return VectorPCA(dim, whiten=whiten).fit(cache.get_many([keys[r] for r in rows]))


def catalog_image_paths(dataset_dir: Path) -> tuple[Path, list[tuple[str, str | None]]]:
    """The catalog's path and its ``(item_id, image_path)`` rows in catalog order (None where a row has no
    path); an error naming the file when there is no catalog or no image path at all. Both embedding
    pipelines (this one and :mod:`vistaste.data.beam_embedding`) read the catalog here."""
    catalog_path = find_table(dataset_dir, "catalog")
    if catalog_path is None:
        raise FileNotFoundError(f"{dataset_dir}: no catalog.parquet or catalog.csv")
    catalog = read_table(catalog_path)
    if "image_path" not in catalog or catalog["image_path"].isna().all():
        raise ValueError(f"{catalog_path}: no image paths (column 'image_path' missing or empty); bring your own vectors instead")
    paths = [None if rel is None or (isinstance(rel, float) and np.isnan(rel)) else str(rel) for rel in catalog["image_path"]]
    return catalog_path, list(zip(catalog["item_id"].astype(str).tolist(), paths))


def embed_catalog(
    dataset_dir: str | Path,
    backbone,
    out_dir: str | Path | None = None,
    batch_size: int = EMBED_BATCH,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    pca_dim: int | None = None,
    whiten: bool = False,
    progress: bool = True,
    io_threads: int = 4,
    shard_rows: int = 1024,
    pca_fit_rows: int = 25_000,
    output_chunk: int = 4096,
) -> EmbedResult:
    """Embed every image of ``dataset_dir``'s catalog with ``backbone`` (see module docstring).

    ``workers`` (default: one per CPU core) each hash, decode and embed whole batches, which
    ``io_threads`` read ahead. The default onnxruntime backbone uses one thread per call, which
    measured faster on 2 cores than one call spread over both cores while another thread decodes.
    """
    dataset_dir = Path(dataset_dir)
    out_dir = Path(out_dir) if out_dir is not None else dataset_dir
    workers = workers or os.cpu_count() or 1
    catalog_path, catalog_rows = catalog_image_paths(dataset_dir)
    cache = EmbeddingCache(cache_dir or out_dir / ".embedding_cache", backbone.cache_key)
    started = time.perf_counter()

    errors, rows = [], []
    given = []
    for item_id, rel in catalog_rows:
        if rel is None:
            errors.append((item_id, "", "no image_path"))
        else:
            given.append((item_id, rel))
    for (item_id, rel), target in zip(given, resolve_all_inside(dataset_dir, [rel for _, rel in given])):
        if isinstance(target, DatasetPathError):  # refused paths are never opened
            errors.append((item_id, rel, f"refused: {target.reason}"))
        else:
            rows.append((item_id, target))
    del given

    n_new, keys_by_item = 0, {}
    pending: dict[str, np.ndarray] = {}  # embedded, not yet stored: content hash -> vector

    def store() -> None:
        # Shards of ~shard_rows rows: a killed run loses at most that much work, and a 100k catalog
        # makes ~100 files rather than one per batch.
        if pending:
            cache.add(list(pending), np.stack(list(pending.values())))
            pending.clear()

    with ThreadPoolExecutor(io_threads) as io_pool, ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(rows), desc=f"embed ({backbone.name})", unit="img", disable=not progress) as bar:
        # Two bounded stages: files are read a few units ahead (a cold disk left cores idle otherwise),
        # then each worker hashes, decodes and embeds whole units. At most 4 * workers units of encoded
        # bytes are held (128 files on 2 cores: ~0.6 GB even for 5 MB photos).
        read_ahead = bounded_map(_read_unit, _batches(rows, batch_size), io_pool, window=2 * workers)
        compute = lambda unit: _hash_decode_embed(backbone, cache.__contains__, unit)  # noqa: E731
        try:
            for outcomes, new_keys, vectors in bounded_map(compute, read_ahead, pool, window=2 * workers):
                for item_id, path, key, reason in outcomes:
                    if reason is None:
                        keys_by_item[item_id] = key
                    else:
                        errors.append((item_id, str(path), reason))
                # Kept in order by this (main) thread; another unit may have had the same file.
                for key, vector in zip(new_keys, vectors if vectors is not None else []):
                    if key not in cache and key not in pending:
                        pending[key] = vector
                        n_new += 1
                if len(pending) >= shard_rows:
                    store()
                bar.update(len(outcomes))
                bar.set_postfix(embedded=n_new, embedded_per_s=f"{n_new / (time.perf_counter() - started):.0f}")
        finally:  # even when interrupted: every finished vector is kept, so a re-run resumes after it
            store()
    del rows
    cache.compact(target_rows=shard_rows)  # leftovers of earlier (incremental) runs -> full-size shards

    ids = [i for i, k in keys_by_item.items() if k in cache]
    # Failed rows for which an identical file embedded fine are not failures (duplicates share one key).
    error_frame = pd.DataFrame(errors, columns=["item_id", "image_path", "reason"])
    error_frame = error_frame[~error_frame["item_id"].isin(set(ids))]

    manifest = {**backbone.manifest(), "count": len(ids), "failed": len(error_frame), "catalog": str(catalog_path)}
    pca = None
    if pca_dim:
        pca = _fit_pca(cache, [keys_by_item[i] for i in ids], pca_dim, whiten, pca_fit_rows)
        manifest["pca"] = {"dim": pca_dim, "whiten": whiten, "explained_variance_ratio": float(pca.explained_variance_ratio_.sum()),
                           "fitted_on_rows": min(pca_fit_rows, len(ids))}
        pca.save(out_dir / "embeddings.pca.npz")
    manifest["dim"] = pca_dim or backbone.dim
    out_dir.mkdir(parents=True, exist_ok=True)
    # Streamed in catalog order, a chunk at a time: memory does not grow with the catalog.
    with VectorTableWriter(out_dir / EMBEDDINGS_FILE, manifest["dim"]) as writer:
        for chunk in _batches(ids, output_chunk):
            vectors = cache.get_many([keys_by_item[i] for i in chunk])
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                raise ValueError(f"backbone produced non-finite vectors for items {[chunk[r] for r in np.flatnonzero(~finite)[:5]]}")
            writer.write(chunk, pca.transform(vectors) if pca is not None else vectors)
    output = writer.path
    write_table(error_frame, out_dir / ERRORS_FILE)
    seconds = time.perf_counter() - started
    manifest.update({"embedded_now": n_new, "from_cache": len(ids) - min(n_new, len(ids)), "seconds": seconds})
    write_json(manifest, out_dir / MANIFEST_FILE)
    return EmbedResult(n_new, len(ids) - min(n_new, len(ids)), len(error_frame), seconds, n_new / seconds if seconds else 0.0, output,
                       error_frame)


def read_manifest(directory: str | Path) -> dict:
    return json.loads((Path(directory) / MANIFEST_FILE).read_text())
