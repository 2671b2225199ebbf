"""Data contract, loaders, validation, splits, the seen-item policy, trends and image embedding.

Knows nothing of models or serving.
"""
from vistaste.data.io import atomic_path, read_table, write_table
from vistaste.data.validation import DataValidationError, Problem, ValidationReport, validate_dataset

__all__ = [
    "DataValidationError",
    "Problem",
    "ValidationReport",
    "atomic_path",
    "read_table",
    "validate_dataset",
    "write_table",
]
