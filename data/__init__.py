"""Data contract, loaders, validation, splits, the seen-item policy, trends and image embedding.

Knows nothing of models or serving.
"""
from vistaste.data.io import atomic_path, read_table, write_table

_VALIDATION = ("DataValidationError", "Problem", "ValidationReport", "validate_dataset")


def __getattr__(name: str):
    """The validation names load pandera (~0.3 s), which the serving process never needs: imported on first use."""
    if name in _VALIDATION:
        from vistaste.data import validation

        return getattr(validation, name)
    raise AttributeError(f"module 'vistaste.data' has no attribute {name!r}")


__all__ = [
    "DataValidationError",
    "Problem",
    "ValidationReport",
    "atomic_path",
    "read_table",
    "validate_dataset",
    "write_table",
]
