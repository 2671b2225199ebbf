"""Table I/O (Parquet or CSV by extension) and atomic writes."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pandas as pd

TABLE_SUFFIXES = (".parquet", ".csv")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``final`` only if the block succeeds.

    Works for files and directories. Readers never see a half-written artifact, and a crash leaves
    the previous version in place.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            # os.replace cannot replace a non-empty directory: move the old one aside first.
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Parquet or CSV table, chosen by the file extension."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use one of {TABLE_SUFFIXES}")


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table atomically as Parquet or CSV, chosen by the file extension."""
    path = Path(path)
    if path.suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use one of {TABLE_SUFFIXES}")
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def _vector_column(vectors):
    """One fixed-size-list column from a 2-D float32 array, with no per-row Python objects (a 100k x 1280
    table would otherwise hold several extra copies in memory while being converted)."""
    import numpy as np
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    width = vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)


class VectorTableWriter:
    """Streams an ``id, vector`` Parquet table to disk one row group at a time, atomically.

    >>> with VectorTableWriter(path, dim=1280) as writer:   # doctest: +SKIP
    ...     writer.write(ids, vectors)                       # as many times as needed
    """

    def __init__(self, path: str | os.PathLike, dim: int, id_column: str = "item_id"):
        import pyarrow as pa

        self.path, self.dim, self.id_column, self.rows = Path(path), dim, id_column, 0
        self.schema = pa.schema([(id_column, pa.string()), ("vector", pa.list_(pa.float32(), dim))])

    def __enter__(self) -> "VectorTableWriter":
        import pyarrow.parquet as pq

        self._atomic = atomic_path(self.path)
        self._writer = pq.ParquetWriter(self._atomic.__enter__(), self.schema)
        return self

    def write(self, ids, vectors) -> None:
        import pyarrow as pa

        if len(ids) != len(vectors) or (len(vectors) and vectors.shape[1] != self.dim):
            raise ValueError(f"{self.path}: expected {len(ids)} vectors of dim {self.dim}, got shape {getattr(vectors, 'shape', None)}")
        ids = pa.array([str(i) for i in ids], pa.string())
        self._writer.write_table(pa.Table.from_arrays([ids, _vector_column(vectors)], schema=self.schema))
        self.rows += len(ids)

    def __exit__(self, *exc_info) -> None:
        self._writer.close()
        self._atomic.__exit__(*exc_info)  # renames onto the final path only when no exception


def write_vectors(path: str | os.PathLike, ids, vectors, id_column: str = "item_id") -> Path:
    """Write an ``item_id, vector`` Parquet table atomically, the vectors as one fixed-size-list column."""
    import numpy as np

    vectors = np.asarray(vectors, dtype=np.float32)
    with VectorTableWriter(path, vectors.shape[1] if vectors.ndim == 2 and vectors.shape[1] else 1, id_column) as writer:
        writer.write(list(ids), vectors.reshape(len(vectors), -1) if len(vectors) else np.zeros((0, writer.dim), np.float32))
    return Path(path)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    return path


def find_table(directory: str | os.PathLike, stem: str) -> Path | None:
    """Return ``directory/stem.parquet`` or ``directory/stem.csv`` (first that exists), else None."""
    for suffix in TABLE_SUFFIXES:
        candidate = Path(directory) / f"{stem}{suffix}"
        if candidate.exists():
            return candidate
    return None
