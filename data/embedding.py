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
import hashlib
import io
import json
import os
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm.auto import tqdm

from vistaste.data.io import (
    DatasetPathError,
    VectorTableWriter,
    find_table,
    read_table,
    resolve_all_inside,
    write_json,
    write_table,
    write_vectors,
)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never a half-grey image

MAX_PIXELS = 40_000_000  # refuse decompression bombs: more pixels than any catalog photo needs
EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "embeddings.manifest.json"
ERRORS_FILE = "embedding_errors.csv"


_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"RIFF", "WebP"), (b"BM", "BMP"))


class ImageError(ValueError):
    """An image that cannot be embedded; the message is the reason written to the errors file."""


def read_image_file(path: str | Path) -> bytes:
    """The file's bytes, or :class:`ImageError` ("file not found", "empty file", "unreadable file")."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError("file not found") from exc
    except OSError as exc:  # the reason only (the path is reported beside it): e.g. "Permission denied"
        raise ImageError(f"unreadable file: {exc.strerror or type(exc).__name__}") from exc
    if not data:
        raise ImageError("empty file")
    return data


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Decode an encoded image (any PIL-readable format) to uint8 RGB ``[size, size, 3]`` (bilinear resize).

    Greyscale/CMYK/palette images are converted; alpha is composited over white. Raises
    :class:`ImageError` for empty, truncated, corrupt, non-image or oversized (decompression bomb) data.
    """
    return np.asarray(decode_rgb(data, size).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def decode_rgb(data: bytes, size: int) -> Image.Image:
    """Decode an encoded image to an RGB PIL image at about ``size`` pixels or more (JPEG decodes at a
    reduced scale), with the checks and reasons of :func:`decode_image`, which resizes it to a square."""
    if not data:
        raise ImageError("empty file")
    try:
        # No warnings.catch_warnings() here: it is not thread-safe, and the explicit pixel limit below
        # refuses bombs before PIL's own (larger) warning threshold matters.
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image too large ({width}x{height} pixels > {MAX_PIXELS}): possible decompression bomb")
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
            image.load()
            if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, rgba)
            return image.convert("RGB")
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        known = next((fmt for magic, fmt in _SIGNATURES if data.startswith(magic)), None)
        if known:
            raise ImageError(f"corrupt or truncated image: {known} signature but cannot be decoded") from exc
        raise ImageError("not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def load_image(path: str | Path, size: int) -> np.ndarray:
    """:func:`decode_image` of a file; also raises :class:`ImageError` for a missing or empty file."""
    return decode_image(read_image_file(path), size)


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EmbeddingCache:
    """Vectors keyed by image content hash, stored as Parquet shards under ``root/cache_key``.

    Each shard is written atomically, so a killed run keeps every stored shard, and :meth:`compact`
    merges the small shards that incremental runs leave behind. Only the keys live
    in memory (key -> shard); vectors are read back a shard at a time through a small LRU bounded in
    rows, so memory stays flat however large the catalog (100k x 1280 floats would be 0.5 GB).
    """

    def __init__(self, root: str | Path, cache_key: str, rows_in_memory: int = 20_000):
        import pyarrow.parquet as pq

        self.directory = Path(root) / cache_key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._shard_of: dict[str, Path] = {}
        self._shard_rows: dict[Path, int] = {}
        for shard in sorted(self.directory.glob("shard-*.parquet")):
            keys = pq.read_table(shard, columns=["content_hash"]).column(0).to_pylist()
            self._shard_of.update(dict.fromkeys(keys, shard))
            self._shard_rows[shard] = len(keys)
        self._recent: OrderedDict[Path, dict[str, np.ndarray]] = OrderedDict()  # LRU of read shards
        self._rows_in_memory = rows_in_memory

    def __contains__(self, key: str) -> bool:
        return key in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    @property
    def shards(self) -> int:
        return len(self._shard_rows)

    def _shard(self, path: Path) -> dict[str, np.ndarray]:
        if path in self._recent:
            self._recent.move_to_end(path)
            return self._recent[path]
        keys, vectors = _read_vector_table(path, "content_hash")
        rows = dict(zip(keys, vectors))
        self._recent[path] = rows
        while len(self._recent) > 1 and sum(len(r) for r in self._recent.values()) > self._rows_in_memory:
            self._recent.popitem(last=False)
        return rows

    def get_many(self, keys: list[str]) -> np.ndarray:
        """Vectors for ``keys``, in order. Shards are read in order of first use and kept in a small
        LRU, so keys in the order they were embedded (the catalog's) read each shard about once."""
        return np.stack([self._shard(self._shard_of[key])[key] for key in keys]).astype(np.float32, copy=False)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        shard = self.directory / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        write_vectors(shard, keys, vectors, id_column="content_hash")
        self._shard_of.update(dict.fromkeys(keys, shard))
        self._shard_rows[shard] = len(keys)

    def compact(self, target_rows: int = 1024) -> int:
        """Merge runs of consecutive small shards into shards of about ``target_rows`` rows, streamed
        one shard at a time; returns how many shards were merged away. A merged shard is written
        (atomically) before its parts are deleted, so a crash in between leaves duplicates, not gaps."""
        before = self.shards
        group: list[Path] = []
        for shard in sorted(self._shard_rows):
            if self._shard_rows[shard] >= target_rows:
                continue
            group.append(shard)
            if sum(self._shard_rows[g] for g in group) >= target_rows:
                self._merge(group)
                group = []
        if len(group) > 1:
            self._merge(group)
        return before - self.shards

    def _merge(self, group: list[Path]) -> None:
        # Named after its first part, so shards still sort in the order they were embedded.
        merged = group[0].with_name(f"{group[0].stem}-merged.parquet")
        keys, vectors = _read_vector_table(group[0], "content_hash")
        merged_keys: list[str] = []
        with VectorTableWriter(merged, vectors.shape[1], id_column="content_hash") as writer:
            for number, part in enumerate(group):
                if number:
                    keys, vectors = _read_vector_table(part, "content_hash")
                writer.write(keys, vectors)
                merged_keys.extend(keys)
        self._shard_of.update(dict.fromkeys(merged_keys, merged))
        self._shard_rows[merged] = len(merged_keys)
        for part in group:
            del self._shard_rows[part]
            self._recent.pop(part, None)
            part.unlink()


def _bounded_map(fn: Callable, items: Iterable, pool: ThreadPoolExecutor, window: int) -> Iterator:
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


def embed_catalog(
    dataset_dir: str | Path,
    backbone,
    out_dir: str | Path | None = None,
    batch_size: int = 16,
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
    catalog_path = find_table(dataset_dir, "catalog")
    if catalog_path is None:
        raise FileNotFoundError(f"{dataset_dir}: no catalog.parquet or catalog.csv")
    catalog = read_table(catalog_path)
    if "image_path" not in catalog or catalog["image_path"].isna().all():
        raise ValueError(f"{catalog_path}: no image paths (column 'image_path' missing or empty); bring your own vectors instead")
    cache = EmbeddingCache(cache_dir or out_dir / ".embedding_cache", backbone.cache_key)
    started = time.perf_counter()

    errors, rows = [], []
    given = []
    for item_id, rel in zip(catalog["item_id"].astype(str), catalog["image_path"]):
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            errors.append((item_id, "", "no image_path"))
        else:
            given.append((item_id, str(rel)))
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
        read_ahead = _bounded_map(_read_unit, _batches(rows, batch_size), io_pool, window=2 * workers)
        compute = lambda unit: _hash_decode_embed(backbone, cache.__contains__, unit)  # noqa: E731
        try:
            for outcomes, new_keys, vectors in _bounded_map(compute, read_ahead, pool, window=2 * workers):
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


def _read_vector_table(path: Path, id_column: str) -> tuple[list[str], np.ndarray]:
    """(ids, float32[n, d]) from a Parquet ``id, vector`` table whose vectors are a list or fixed-size
    list column (cache shards written before fixed-size lists are still readable)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=[id_column, "vector"])
    column = table.column("vector").combine_chunks()
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}, row {row}, column 'vector': missing vector")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return table.column(id_column).to_pylist(), values.reshape(len(column), -1) if len(column) else np.zeros((0, 0), np.float32)


def _read_fixed_size_vectors(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, vectors) straight from a Parquet file whose vector column is a fixed-size list, else None."""
    if path.suffix != ".parquet" or not path.exists():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if "vector" not in schema.names or "item_id" not in schema.names or not pa.types.is_fixed_size_list(schema.field("vector").type):
        return None
    ids, vectors = _read_vector_table(path, "item_id")
    return np.asarray(ids, dtype=str), vectors


def load_vectors(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``item_id, vector`` table (ours, or your own e.g. CLIP vectors) -> (ids, float32[n, d]).

    Raises with file, row and column on duplicate ids, ragged lengths or non-finite values.
    """
    path = Path(path)
    fixed = _read_fixed_size_vectors(path)
    if fixed is not None:  # our own files: one contiguous array, no per-row objects
        ids, vectors = fixed
    else:
        table = read_table(path)
        for column in ("item_id", "vector"):
            if column not in table:
                raise ValueError(f"{path}: column {column!r} is missing (need item_id, vector)")
        ids = table["item_id"].astype(str).to_numpy()
        lengths = table["vector"].map(len).to_numpy()
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ValueError(f"{path}, row {row}, column 'vector': length {lengths[row]}, expected {lengths[0]}")
        vectors = np.stack(table["vector"].to_numpy()).astype(np.float32) if len(table) else np.zeros((0, 0), np.float32)
    duplicated = np.flatnonzero(pd.Series(ids).duplicated().to_numpy())
    if len(duplicated):
        raise ValueError(f"{path}, row {duplicated[0]}, column 'item_id': duplicate id {ids[duplicated[0]]!r}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{path}, row {row}, column 'vector': NaN or infinite value (item {ids[row]!r})")
    return ids, vectors


def read_manifest(directory: str | Path) -> dict:
    return json.loads((Path(directory) / MANIFEST_FILE).read_text())
