"""Small numpy helpers for item vectors, shared by every layer above (data -> towers -> serving)."""
from __future__ import annotations

import numpy as np


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length; an all-zero row stays zero (no division by zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
