"""Validate a dataset directory against the data contract and load it without losing good rows.

A dataset directory holds ``catalog.{parquet,csv}``, ``interactions.{parquet,csv}`` and optionally
``users.{parquet,csv}``. Every problem is reported with file, row (0-based data row, as in pandas) and
column; the loaders can either raise on the first invalid dataset or drop exactly the bad rows. Image
paths must stay inside the dataset directory (:func:`vistaste.data.io.resolve_inside`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from vistaste.data.io import DatasetPathError, find_table, read_table_lenient, resolve_all_inside
from vistaste.data.schema import (
    CATALOG_SCHEMA,
    CATALOG_STEM,
    INTERACTIONS_SCHEMA,
    INTERACTIONS_STEM,
    USERS_SCHEMA,
    USERS_STEM,
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One data problem: where it is and what is wrong."""

    file: str
    row: int | None
    column: str | None
    message: str
    severity: str = "error"  # "error" fails validation; "warning" is reported only

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
            if self.file.endswith(".csv"):
                where += f" (line {self.row + 2})"  # header is line 1
        if self.column is not None:
            where += f", column {self.column!r}"
        return f"{self.severity}: {where}: {self.message}"


@dataclasses.dataclass
class ValidationReport:
    problems: list[Problem] = dataclasses.field(default_factory=list)
    row_counts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def bad_rows(self, file: str) -> set[int]:
        """Rows of ``file`` that carry at least one error."""
        return {p.row for p in self.errors if p.file == file and p.row is not None}

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems) or "no problems"


class DataValidationError(ValueError):
    """Raised when data breaks the contract; the message lists every problem (file, row, column)."""

    def __init__(self, report: ValidationReport, limit: int = 50):
        self.report = report
        lines = [str(p) for p in report.errors[:limit]]
        more = len(report.errors) - limit
        if more > 0:
            lines.append(f"... and {more} more errors")
        super().__init__(f"{len(report.errors)} data error(s):\n" + "\n".join(lines))


def _as_id(series: pd.Series) -> pd.Series:
    """Ids are strings everywhere; integer ids from CSV/Parquet are converted, nulls stay null."""
    out = series.astype("object")
    mask = out.notna()
    out[mask] = out[mask].map(lambda v: str(int(v)) if isinstance(v, (float, np.floating)) and float(v).is_integer() else str(v))
    return out


def _parse_times(frame: pd.DataFrame, column: str, file: str, report: ValidationReport, nullable: bool) -> pd.Series:
    """Parse a timestamp column (datetimes, ISO strings or epoch seconds) to UTC, reporting bad cells."""
    raw = frame[column]
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = pd.to_datetime(raw, utc=True)
    elif pd.api.types.is_numeric_dtype(raw):
        parsed = pd.to_datetime(raw, unit="s", utc=True, errors="coerce")
    else:
        parsed = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    parsed = parsed.dt.as_unit("ns")
    bad = parsed.isna() & raw.notna()
    for row in np.flatnonzero(bad.to_numpy()):
        report.problems.append(Problem(file, int(row), column, f"unparseable timestamp {raw.iloc[row]!r}"))
    if not nullable:
        for row in np.flatnonzero(raw.isna().to_numpy()):
            report.problems.append(Problem(file, int(row), column, "missing timestamp"))
    return parsed


def _check_schema(frame: pd.DataFrame, schema: pa.DataFrameSchema, file: str, report: ValidationReport) -> None:
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        for case in exc.failure_cases.itertuples(index=False):
            row = None if pd.isna(case.index) else int(case.index)
            column = None if pd.isna(case.column) else str(case.column)
            if column in ("timestamp", "created_at") and row is not None:
                continue  # already reported by _parse_times with the original value
            check = str(case.check)
            if check == "not_nullable":
                message = "missing value (null/NaN)"
            elif check.startswith("field_uniqueness") or check == "unique":
                message = f"duplicate id {case.failure_case!r}"
            elif check == "column_in_dataframe":
                # pandera names the schema (e.g. 'interactions') as the column and the missing one as the case
                column, message = str(case.failure_case), "required column is missing"
            else:
                message = f"failed check {check} with value {case.failure_case!r}"
            report.problems.append(Problem(file, row, column, message))


def _read(path: Path, schema: pa.DataFrameSchema, report: ValidationReport) -> pd.DataFrame | None:
    """The table, or None (reported) when it cannot be read or has no rows; CSV records with more fields
    than the header are reported by row and kept, cut to the header's columns."""
    try:
        frame, long_rows = read_table_lenient(path)
    except Exception as exc:  # unreadable file: report it and keep checking the others
        report.problems.append(Problem(str(path), None, None, f"cannot read table: {exc}"))
        return None
    for row, message in long_rows:
        report.problems.append(Problem(str(path), row, None, message))
    if frame.empty:
        missing = [name for name, column in schema.columns.items() if column.required and name not in frame.columns]
        for name in missing:
            report.problems.append(Problem(str(path), None, name, "required column is missing"))
        what = "a header but no data" if len(frame.columns) else "no columns"
        report.problems.append(Problem(str(path), None, None, f"no rows: the table has {what}"))
        report.row_counts[schema.name] = 0
        return None
    return frame


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system: not a usable file either
        return False


def _normalise_catalog(frame: pd.DataFrame, file: str, report: ValidationReport) -> pd.DataFrame:
    frame = frame.copy()
    if "item_id" in frame:
        frame["item_id"] = _as_id(frame["item_id"])
    for column in ("image_path", "tags"):
        if column in frame:
            frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
    if "created_at" in frame:
        frame["created_at"] = _parse_times(frame, "created_at", file, report, nullable=True)
    return frame


def _normalise_interactions(frame: pd.DataFrame, file: str, report: ValidationReport) -> pd.DataFrame:
    frame = frame.copy()
    for column in ("user_id", "item_id"):
        if column in frame:
            frame[column] = _as_id(frame[column])
    if "event" in frame:
        frame["event"] = frame["event"].astype("object")
    if "timestamp" in frame:
        frame["timestamp"] = _parse_times(frame, "timestamp", file, report, nullable=False)
    if "position" in frame:
        frame["position"] = pd.to_numeric(frame["position"], errors="coerce").astype(float)
    return frame


def validate_dataset(directory: str | Path, check_images: bool = True) -> tuple[ValidationReport, dict[str, pd.DataFrame]]:
    """Check a dataset directory; return the report and the normalised tables (all rows kept).

    Checks CSV records with more fields than the header, empty tables, types, nulls/NaN, duplicate ids,
    unknown item ids in interactions, unparseable timestamps, timestamps out of order (a warning: loaders
    sort by time), image paths that leave the dataset directory (absolute, ``..`` or a symlink pointing
    out: always checked, since embedding and the gallery refuse them) and, with ``check_images``,
    missing image files.
    """
    directory = Path(directory)
    report = ValidationReport()
    tables: dict[str, pd.DataFrame] = {}

    catalog_path = find_table(directory, CATALOG_STEM)
    interactions_path = find_table(directory, INTERACTIONS_STEM)
    for stem, path in ((CATALOG_STEM, catalog_path), (INTERACTIONS_STEM, interactions_path)):
        if path is None:
            report.problems.append(Problem(str(directory / f"{stem}.parquet"), None, None, f"missing {stem} table (.parquet or .csv)"))

    if catalog_path is not None and (frame := _read(catalog_path, CATALOG_SCHEMA, report)) is not None:
        file = str(catalog_path)
        catalog = _normalise_catalog(frame, file, report)
        _check_schema(catalog, CATALOG_SCHEMA, file, report)
        if "image_path" in catalog:
            given = [(row, rel) for row, rel in enumerate(catalog["image_path"]) if rel is not None]
            for (row, rel), target in zip(given, resolve_all_inside(directory, [rel for _, rel in given])):
                if isinstance(target, DatasetPathError):
                    report.problems.append(Problem(file, row, "image_path", str(target)))
                elif check_images and not _is_file(target):
                    report.problems.append(Problem(file, row, "image_path", f"image file not found: {directory / rel}"))
        report.row_counts[CATALOG_STEM] = len(catalog)
        tables[CATALOG_STEM] = catalog

    if interactions_path is not None and (frame := _read(interactions_path, INTERACTIONS_SCHEMA, report)) is not None:
        file = str(interactions_path)
        interactions = _normalise_interactions(frame, file, report)
        _check_schema(interactions, INTERACTIONS_SCHEMA, file, report)
        if CATALOG_STEM in tables and "item_id" in interactions:
            known = set(tables[CATALOG_STEM]["item_id"].dropna())
            unknown = interactions["item_id"].notna() & ~interactions["item_id"].isin(known)
            for row in np.flatnonzero(unknown.to_numpy()):
                report.problems.append(Problem(file, int(row), "item_id",
                                               f"unknown item id {interactions['item_id'].iloc[row]!r} (not in catalog)"))
        if "timestamp" in interactions:
            times = interactions["timestamp"]
            earlier = (times < times.cummax().shift(1)).to_numpy()
            for row in np.flatnonzero(earlier):
                report.problems.append(Problem(file, int(row), "timestamp", "timestamp out of order (earlier than a previous row)",
                                               "warning"))
        report.row_counts[INTERACTIONS_STEM] = len(interactions)
        tables[INTERACTIONS_STEM] = interactions

    users_path = find_table(directory, USERS_STEM)
    if users_path is not None and (frame := _read(users_path, USERS_SCHEMA, report)) is not None:
        users = frame.copy()
        if "user_id" in users:
            users["user_id"] = _as_id(users["user_id"])
        _check_schema(users, USERS_SCHEMA, str(users_path), report)
        report.row_counts[USERS_STEM] = len(users)
        tables[USERS_STEM] = users

    return report, tables


def load_dataset(directory: str | Path, on_error: str = "raise",
                 check_images: bool = True) -> tuple[dict[str, pd.DataFrame], ValidationReport]:
    """Load a validated dataset.

    ``on_error="raise"`` raises :class:`DataValidationError` listing every problem;
    ``on_error="drop"`` drops exactly the rows that carry an error and keeps every good row
    (the report says which were dropped). Interactions come back sorted by timestamp.
    """
    if on_error not in ("raise", "drop"):
        raise ValueError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
    report, tables = validate_dataset(directory, check_images=check_images)
    file_level = [p for p in report.errors if p.row is None]
    if (on_error == "raise" and not report.ok) or file_level:
        raise DataValidationError(report)
    directory = Path(directory)
    for stem in list(tables):
        path = find_table(directory, stem)
        bad = report.bad_rows(str(path))
        if bad:
            tables[stem] = tables[stem].drop(index=sorted(bad)).reset_index(drop=True)
    if INTERACTIONS_STEM in tables:
        tables[INTERACTIONS_STEM] = tables[INTERACTIONS_STEM].sort_values("timestamp", kind="stable").reset_index(drop=True)
    return tables, report
