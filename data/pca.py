"""PCA/whitening of item vectors (e.g. 1280 -> 128) fitted on the catalog, saved beside the embeddings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from vistaste.data.io import atomic_path


class VectorPCA:
    """scikit-learn's PCA, stored as plain arrays so applying it needs only numpy.

    >>> VectorPCA(2).fit(np.random.default_rng(0).normal(size=(10, 5))).transform(np.ones((1, 5))).shape
    (1, 2)
    """

    def __init__(self, n_components: int, whiten: bool = False):
        if n_components <= 0:
            raise ValueError(f"n_components must be positive, got {n_components}")
        self.n_components = n_components
        self.whiten = whiten
        self.mean_ = self.components_ = self.explained_variance_ = self.explained_variance_ratio_ = None

    def fit(self, vectors: np.ndarray) -> "VectorPCA":
        if self.n_components > min(vectors.shape):
            raise ValueError(f"n_components must be <= min(n_items, dim) = {min(vectors.shape)}, got {self.n_components}")
        pca = PCA(self.n_components, whiten=self.whiten, random_state=0).fit(vectors)
        self.mean_, self.components_ = pca.mean_.astype(np.float32), pca.components_.astype(np.float32)
        self.explained_variance_, self.explained_variance_ratio_ = pca.explained_variance_, pca.explained_variance_ratio_
        return self

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        out = (vectors - self.mean_) @ self.components_.T
        if self.whiten:
            out = out / np.sqrt(self.explained_variance_ + 1e-12)
        else:  # keep relative variances, but bring the average component to unit scale for the MLPs
            out = out / np.sqrt(self.explained_variance_.mean() + 1e-12)
        return out.astype(np.float32)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                np.savez(stream, mean=self.mean_, components=self.components_, variance=self.explained_variance_,
                         ratio=self.explained_variance_ratio_, whiten=self.whiten)

    @classmethod
    def load(cls, path: str | Path) -> "VectorPCA":
        arrays = np.load(path)
        pca = cls(int(arrays["components"].shape[0]), whiten=bool(arrays["whiten"]))
        pca.mean_, pca.components_ = arrays["mean"], arrays["components"]
        pca.explained_variance_, pca.explained_variance_ratio_ = arrays["variance"], arrays["ratio"]
        return pca
