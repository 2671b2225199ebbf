"""Item vectors: unit rows, and reading vector tables (``item_id, vector``) whatever their layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.io import read_table


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length; an all-zero row stays zero (no division by zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


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
