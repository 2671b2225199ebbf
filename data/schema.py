"""The data contract: column schemas for the catalog, interaction log and optional user features.

Checked with pandera (lazy validation collects every failing cell, not just the first). The names the
contract shares with the rest of the code (event kinds, table stems, the title column) live in
:mod:`vistaste.data.contract`, which the serving process imports without loading pandera.
"""
from __future__ import annotations

import pandera.pandas as pa

from vistaste.data.contract import (  # noqa: F401  (re-exported: the contract in one place)
    CATALOG_STEM,
    EVENTS,
    INTERACTIONS_STEM,
    POSITIVE_EVENTS,
    TITLE_COLUMNS,
    USERS_STEM,
    title_column,
)

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
