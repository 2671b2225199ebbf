"""The data contract's shared names, free of pandera: event kinds, table stems, the display-title column.

The column schemas that check a dataset are in :mod:`vistaste.data.schema` (pandera); this module is what
the serving process and the feature code import, so answering a request never loads the validator.
"""
from __future__ import annotations

EVENTS = ("impression", "click", "save")
POSITIVE_EVENTS = ("click", "save")

CATALOG_STEM = "catalog"
INTERACTIONS_STEM = "interactions"
USERS_STEM = "users"
TITLE_COLUMNS = ("title", "name")  # optional display text for an item; the first one present is used


def title_column(columns) -> str | None:
    """The catalog column that holds display titles: ``title``, else ``name``, else None.

    >>> title_column(["item_id", "name", "tags"])
    'name'
    """
    return next((c for c in TITLE_COLUMNS if c in columns), None)
