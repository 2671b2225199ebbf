"""`vistaste embed`: every catalog image -> one vector, incremental, resumable and atomic.

Pipeline: hash each image file (content hash) -> look up the cache (keyed by content hash and the
backbone's ``cache_key``) -> decode/resize the misses on a thread pool, overlapped with inference ->
append each finished batch to the cache as its own shard (so a killed run resumes) -> write
``embeddings.parquet`` (``item_id, vector``), ``embeddings.manifest.json`` and ``embedding_errors.csv``.
Images that cannot be used are reported with item id, path and reason; never a silent zero vector.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd
from PIL import Image, ImageFile
from tqdm.auto import tqdm

from vistaste.data.io import find_table, read_table, write_json, write_table, write_vectors

MAX_PIXELS = 40_000_000  # refuse decompression bombs: more pixels than any catalog photo needs
EMBEDDINGS_FILE = "embeddings.parquet"
MANIFEST_FILE = "embeddings.manifest.json"
ERRORS_FILE = "embedding_errors.csv"


_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"RIFF", "WebP"), (b"BM", "BMP"))


class ImageError(ValueError):
    """An image that cannot be embedded; the message is the reason written to the errors file."""


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode any PIL-readable image to uint8 RGB ``[size, size, 3]`` (bilinear resize).

    Greyscale/CMYK/palette images are converted; alpha is composited over white. Raises
    :class:`ImageError` for missing, empty, truncated, corrupt, non-image or oversized files.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("file not found")
    if path.stat().st_size == 0:
        raise ImageError("empty file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise ImageError(f"image too large ({width}x{height} pixels > {MAX_PIXELS}): possible decompression bomb")
                image.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
                image.load()
                if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    image = Image.alpha_composite(background, rgba)
                rgb = image.convert("RGB").resize((size, size), Image.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb: {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        head = path.read_bytes()[:12]
        known = next((fmt for magic, fmt in _SIGNATURES if head.startswith(magic)), None)
        if known:
            raise ImageError(f"corrupt or truncated image: {known} signature but cannot be decoded") from exc
        raise ImageError("not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image: {exc}") from exc


def content_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class EmbeddingCache:
    """Vectors keyed by image content hash, stored as Parquet shards under ``root/cache_key``.

    Each shard is written atomically, so a run killed between batches keeps every finished batch.
    """

    def __init__(self, root: str | Path, cache_key: str):
        self.directory = Path(root) / cache_key
        self.directory.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.directory.glob("shard-*.parquet")):
            table = pd.read_parquet(shard)
            self._vectors.update(zip(table["content_hash"], table["vector"]))

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def __len__(self) -> int:
        return len(self._vectors)

    def get(self, key: str) -> np.ndarray:
        return np.asarray(self._vectors[key], dtype=np.float32)

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        shard = self.directory / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:6]}.parquet"
        write_table(pd.DataFrame({"content_hash": keys, "vector": list(vectors.astype(np.float32))}), shard)
        self._vectors.update(zip(keys, vectors))


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


@dataclasses.dataclass
class EmbedResult:
    embedded: int
    cached: int
    failed: int
    seconds: float
    images_per_second: float
    output: Path
    errors: pd.DataFrame


def _decode(args):
    item_id, path, key, size = args
    try:
        return item_id, path, key, load_image(path, size), None
    except ImageError as exc:
        return item_id, path, key, None, str(exc)


def embed_catalog(
    dataset_dir: str | Path,
    backbone,
    out_dir: str | Path | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    workers: int = 4,
    pca_dim: int | None = None,
    whiten: bool = False,
    progress: bool = True,
) -> EmbedResult:
    """Embed every image of ``dataset_dir``'s catalog with ``backbone`` (see module docstring)."""
    dataset_dir = Path(dataset_dir)
    out_dir = Path(out_dir) if out_dir is not None else dataset_dir
    catalog_path = find_table(dataset_dir, "catalog")
    if catalog_path is None:
        raise FileNotFoundError(f"{dataset_dir}: no catalog.parquet or catalog.csv")
    catalog = read_table(catalog_path)
    if "image_path" not in catalog or catalog["image_path"].isna().all():
        raise ValueError(f"{catalog_path}: no image paths (column 'image_path' missing or empty); bring your own vectors instead")
    cache = EmbeddingCache(cache_dir or out_dir / ".embedding_cache", backbone.cache_key)
    started = time.perf_counter()

    errors, todo, keys_by_item = [], [], {}
    for row, (item_id, rel) in enumerate(zip(catalog["item_id"].astype(str), catalog["image_path"])):
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            errors.append((item_id, "", "no image_path"))
            continue
        path = dataset_dir / str(rel)
        try:
            key = content_hash(path)
        except OSError:
            errors.append((item_id, str(path), "file not found" if not path.exists() else "unreadable file"))
            continue
        keys_by_item[item_id] = key
        if key not in cache:
            todo.append((item_id, path, key, backbone.image_size))
    unique_todo = list({t[2]: t for t in todo}.values())  # identical files are embedded once

    n_new = 0
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(unique_todo), desc=f"embed ({backbone.name})", unit="img", disable=not progress) as bar:
        batch_keys, batch_images = [], []

        def flush():
            nonlocal n_new
            if batch_keys:
                cache.add(list(batch_keys), backbone.embed(np.stack(batch_images)))
                n_new += len(batch_keys)
                bar.update(len(batch_keys))
                bar.set_postfix(img_s=f"{n_new / (time.perf_counter() - started):.0f}")
                batch_keys.clear()
                batch_images.clear()

        for item_id, path, key, pixels, reason in _bounded_map(_decode, unique_todo, pool, window=batch_size * 4):
            if reason is not None:
                errors.append((item_id, str(path), reason))
                bar.update(1)
                continue
            batch_keys.append(key)
            batch_images.append(pixels)
            if len(batch_keys) == batch_size:
                flush()
        flush()

    ids = [i for i, k in keys_by_item.items() if k in cache]
    vectors = np.stack([cache.get(keys_by_item[i]) for i in ids]) if ids else np.zeros((0, backbone.dim), np.float32)
    if not np.isfinite(vectors).all():
        bad = [ids[r] for r in np.flatnonzero(~np.isfinite(vectors).all(axis=1))]
        raise ValueError(f"backbone produced non-finite vectors for items {bad[:5]}")
    # Failed rows for which an identical file embedded fine are not failures (duplicates share one key).
    error_frame = pd.DataFrame(errors, columns=["item_id", "image_path", "reason"])
    error_frame = error_frame[~error_frame["item_id"].isin(ids)]

    manifest = {**backbone.manifest(), "count": len(ids), "failed": len(error_frame), "catalog": str(catalog_path)}
    if pca_dim:
        from vistaste.data.pca import VectorPCA

        pca = VectorPCA(pca_dim, whiten=whiten).fit(vectors)
        vectors = pca.transform(vectors)
        manifest["pca"] = {"dim": pca_dim, "whiten": whiten, "explained_variance_ratio": float(pca.explained_variance_ratio_.sum())}
        pca.save(out_dir / "embeddings.pca.npz")
    manifest["dim"] = int(vectors.shape[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    output = write_vectors(out_dir / EMBEDDINGS_FILE, ids, vectors)
    write_table(error_frame, out_dir / ERRORS_FILE)
    seconds = time.perf_counter() - started
    manifest.update({"embedded_now": n_new, "from_cache": len(ids) - min(n_new, len(ids)), "seconds": seconds})
    write_json(manifest, out_dir / MANIFEST_FILE)
    return EmbedResult(n_new, len(ids) - min(n_new, len(ids)), len(error_frame), seconds, n_new / seconds if seconds else 0.0, output, error_frame)


def _read_fixed_size_vectors(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, vectors) straight from a Parquet file whose vector column is a fixed-size list, else None."""
    if path.suffix != ".parquet" or not path.exists():
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    if "vector" not in schema.names or "item_id" not in schema.names or not pa.types.is_fixed_size_list(schema.field("vector").type):
        return None
    table = pq.read_table(path, columns=["item_id", "vector"])
    column = table.column("vector").combine_chunks()
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}, row {row}, column 'vector': missing vector")
    width = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, width)
    return table.column("item_id").to_numpy(zero_copy_only=False).astype(str), vectors


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
