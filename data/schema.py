"""The data contract: column schemas for the catalog, interaction log and optional user features.

Checked with pandera (lazy validation collects every failing cell, not just the first).
"""
from __future__ import annotations

import pandera.pandas as pa

EVENTS = ("impression", "click", "save")
POSITIVE_EVENTS = ("click", "save")

CATALOG_STEM = "catalog"
INTERACTIONS_STEM = "interactions"
USERS_STEM = "users"
TITLE_COLUMNS = ("title", "name")  # optional display text for an item; the first one present is used

CATALOG_SCHEMA = pa.DataFrameSchema(
    {
        "item_id": pa.Column(str, nullable=False, unique=True, checks=pa.Check.str_length(min_value=1)),
        "image_path": pa.Column(str, nullable=True, required=False),
        "tags": pa.Column(str, nullable=True, required=False),
        "created_at": pa.Column("datetime64[ns, UTC]", nullable=True, required=False),
    },
    strict=False,
    name="catalog",
)

INTERACTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "user_id": pa.Column(str, nullable=False, checks=pa.Check.str_length(min_value=1)),
        "item_id": pa.Column(str, nullable=False, checks=pa.Check.str_length(min_value=1)),
        "timestamp": pa.Column("datetime64[ns, UTC]", nullable=False),
        "event": pa.Column(str, nullable=False, checks=pa.Check.isin(EVENTS)),
        "position": pa.Column(float, nullable=True, required=False, checks=pa.Check.ge(0)),
    },
    strict=False,
    name="interactions",
)

USERS_SCHEMA = pa.DataFrameSchema(
    {"user_id": pa.Column(str, nullable=False, unique=True, checks=pa.Check.str_length(min_value=1))},
    strict=False,
    name="users",
)


def title_column(columns) -> str | None:
    """The catalog column that holds display titles: ``title``, else ``name``, else None.

    >>> title_column(["item_id", "name", "tags"])
    'name'
    """
    return next((c for c in TITLE_COLUMNS if c in columns), None)
