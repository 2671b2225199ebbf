"""Table I/O (Parquet or CSV by extension), atomic writes, and the rule that confines image paths to
the dataset directory (:func:`resolve_inside`)."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import posixpath
import shutil
import stat
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
    """Read a Parquet or CSV table, chosen by the file extension.

    A CSV record with more fields than the header raises ``ValueError`` naming the file, row and line
    (pandas would otherwise fail with a tokenizer error, or silently turn the first columns into an index).
    """
    frame, long_rows = read_table_lenient(path)
    if long_rows:
        row, message = long_rows[0]
        more = f" (and {len(long_rows) - 1} more such rows)" if len(long_rows) > 1 else ""
        raise ValueError(f"{path}, row {row}: {message}{more}")
    return frame


def read_table_lenient(path: str | os.PathLike) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    """Read a table as :func:`read_table` does, but keep CSV records that have more fields than the header.

    Returns ``(frame, long_rows)``: each such record is kept, cut to the header's columns, so row numbers
    stay those of the file (0-based data rows, as in pandas), and ``long_rows`` lists ``(row, message)``
    for each. Parquet files never have any.

    >>> frame, long_rows = read_table_lenient("interactions.csv")   # doctest: +SKIP
    >>> long_rows                                                    # doctest: +SKIP
    [(1, 'too many fields: 5, the header has 4')]
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    if path.suffix == ".parquet":
        return pd.read_parquet(path), []
    if path.suffix == ".csv":
        return _read_csv(path)
    raise ValueError(f"{path}: unsupported table format {path.suffix!r}; use one of {TABLE_SUFFIXES}")


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[tuple[int, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        records = csv.reader(handle)
        header = next(records, None)
        first = next((r for r in records if r), None)
    if header is not None and (first is None or len(first) <= len(header)):
        try:  # the common case: one pass in pandas' C parser
            return pd.read_csv(path, index_col=False), []
        except pd.errors.ParserError:
            pass  # a later record has too many fields: find them all below
    if header is None:
        return pd.read_csv(path), []  # pandas' own message for an empty file
    long_rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        records = csv.reader(handle)
        next(records)
        row = 0
        for record in records:
            if not record:
                continue  # blank lines are skipped by pandas too, so rows stay aligned
            if len(record) > len(header):
                long_rows.append((row, f"too many fields: {len(record)}, the header has {len(header)}"))
            row += 1
    # index_col=False: never take the extra leading fields as an index; usecols: cut long records.
    return pd.read_csv(path, index_col=False, usecols=range(len(header))), long_rows


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


class DatasetPathError(ValueError):
    """A path that may not be used because it does not stay inside the dataset directory.

    ``reason`` says why without repeating the path, so it can be shown anywhere (a gallery, an API);
    the message (``str``) names the path as well.
    """

    def __init__(self, path, reason: str):
        self.path, self.reason = path, reason
        shown = path if not isinstance(path, str) or len(path) <= 120 else path[:117] + "..."
        super().__init__(f"image path {shown!r} {reason}")


def resolve_inside(dataset_dir: str | os.PathLike, path, allow_absolute: bool = False) -> Path:
    """The real location of ``path``, a path relative to ``dataset_dir``, which must lie inside it.

    This is the one rule for every reader of catalog image paths. Both sides are resolved (symlinks
    followed) before they are compared, so ``..`` escapes and symlinks that point out of the dataset
    are refused, as are absolute paths (unless ``allow_absolute``, for catalogs that store resolved
    paths: then they too must lie inside). Raises :class:`DatasetPathError` (a ``ValueError``) with the
    reason; the file itself is not opened, and need not exist. For a whole catalog column use
    :func:`resolve_all_inside` (the same rule, each folder resolved once).

    >>> resolve_inside("/srv/shop", "../../etc/passwd")
    Traceback (most recent call last):
    ...
    vistaste.data.io.DatasetPathError: image path '../../etc/passwd' leaves the dataset directory ('..')
    """
    return _resolve_checked(os.path.realpath(dataset_dir), path, allow_absolute, {})


def resolve_all_inside(dataset_dir: str | os.PathLike, paths, allow_absolute: bool = False) -> list[Path | DatasetPathError]:
    """:func:`resolve_inside` for each of ``paths``: the resolved path, or the :class:`DatasetPathError`
    (returned, not raised). Each folder is resolved once per call (a 100k catalog is one ``lstat`` per
    file, not one per path component), so results reflect the file system at the time of the call.
    """
    root, folders = os.path.realpath(dataset_dir), {}
    out: list[Path | DatasetPathError] = []
    for path in paths:
        try:
            out.append(_resolve_checked(root, path, allow_absolute, folders))
        except DatasetPathError as exc:
            out.append(exc)
    return out


def _resolve_checked(root: str, path, allow_absolute: bool, folders: dict[str, str]) -> Path:
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise DatasetPathError(path, f"is not text ({type(path).__name__})")
    if not path.strip():
        raise DatasetPathError(path, "is empty")
    if "\x00" in path:
        raise DatasetPathError(path, "contains a NUL character")
    absolute = os.path.isabs(path)
    if absolute and not allow_absolute:
        raise DatasetPathError(path, "is absolute; image paths are relative to the dataset directory")
    if not absolute and posixpath.normpath(path.replace(os.sep, "/")).split("/")[0] == "..":
        raise DatasetPathError(path, "leaves the dataset directory ('..')")
    try:
        target = _real(os.path.join(root, path), folders)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatasetPathError(path, "is a symlink loop") from exc
        raise DatasetPathError(path, f"cannot be resolved ({exc.strerror or exc})") from exc
    if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
        raise DatasetPathError(path, "resolves outside the dataset directory" + ("" if absolute else " through a symlink"))
    return Path(target)


def _real(path: str, folders: dict[str, str]) -> str:
    """``os.path.realpath(path)``, reusing the resolved parent folders in ``folders``: only the last
    component is looked at (resolved fully when it is a symlink). Raises ``OSError`` (ELOOP) for a
    symlink loop on the last component."""
    parent, name = os.path.split(path)
    if name in ("", ".", ".."):
        return os.path.realpath(path)
    real_parent = folders.get(parent)
    if real_parent is None:
        real_parent = folders[parent] = os.path.realpath(parent)
    joined = os.path.join(real_parent, name)
    try:
        if not stat.S_ISLNK(os.lstat(joined).st_mode):
            return joined
    except OSError:  # missing, or a name too long: nothing to follow; opening it will say why
        return joined
    real = os.path.realpath(joined)
    try:
        os.stat(real)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise
    return real


def dataset_relative(dataset_dir: str | os.PathLike, path) -> str | None:
    """``path`` as a clean POSIX path relative to ``dataset_dir`` (what an export or an API may show),
    or None when it is missing or not inside the dataset (see :func:`resolve_inside`).

    Absolute paths inside the dataset (as older exports stored them) are made relative.

    >>> dataset_relative("/srv/shop", "images/./a.png")   # doctest: +SKIP
    'images/a.png'
    """
    if path is None or (isinstance(path, float) and path != path):
        return None
    try:
        target = resolve_inside(dataset_dir, path, allow_absolute=True)
    except DatasetPathError:
        return None
    candidate = Path(os.fspath(path))
    if candidate.is_absolute() and candidate.is_relative_to(Path(dataset_dir).absolute()):
        candidate = candidate.relative_to(Path(dataset_dir).absolute())
    if candidate.is_absolute() or ".." in candidate.parts:  # spelled through a symlinked ancestor or '..'
        candidate = target.relative_to(Path(dataset_dir).resolve())
    return posixpath.normpath(candidate.as_posix())
