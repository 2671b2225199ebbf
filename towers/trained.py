"""A trained two-tower model as an artifact: build, save, load, and score users and items with it.

What evaluation, export and the simulator need of a model, without the training loop
(:mod:`vistaste.towers.training`), so the export (and anything serving loads) never imports training code.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.io import atomic_path
from vistaste.data.pca import VectorPCA
from vistaste.data.trends import TrendSetting
from vistaste.towers.collaborative import Collaborative
from vistaste.towers.collaborative import content as collaborative_content
from vistaste.towers.config import TrainConfig
from vistaste.towers.features import ItemTable
from vistaste.towers.inputs import item_inputs, user_inputs
from vistaste.towers.item_tower import ItemTower
from vistaste.towers.model import TwoTowerModel, model_input_shapes
from vistaste.towers.user_tower import UserTower

VECTOR_TABLES = ("embeddings.parquet", "item_vectors.parquet")
COLLABORATIVE_FILE = "collaborative.npz"


def find_vectors(dataset_dir: Path) -> Path:
    for name in VECTOR_TABLES:
        if (dataset_dir / name).exists():
            return dataset_dir / name
    raise FileNotFoundError(f"{dataset_dir}: no item vectors ({' or '.join(VECTOR_TABLES)}); run `vistaste embed` or pass --vectors")


def load_item_table(dataset_dir: Path, catalog: pd.DataFrame, vectors_path: Path | None) -> ItemTable:
    from vistaste.data.embedding import load_vectors

    ids, vectors = load_vectors(vectors_path or find_vectors(dataset_dir))
    return ItemTable.build(ids, vectors, catalog)


class TrainedTwoTower:
    """A trained model with its item table: everything evaluation and export need."""

    def __init__(self, config: TrainConfig, model: TwoTowerModel, table: ItemTable, pca: VectorPCA | None, history: dict,
                 collaborative: Collaborative | None = None):
        self.config, self.model, self.table, self.pca, self.history = config, model, table, pca, history
        self.collaborative = collaborative  # the ALS term beside the towers (towers/collaborative.py); None: towers alone

    # -------------------------------------------------------------------------------- features
    @property
    def dim(self) -> int:
        """The length of the model's user and item vectors: the towers' output, then the collaborative factors."""
        return self.config.output_dim + (self.collaborative.factors if self.collaborative is not None else 0)

    def user_vectors(self, user_ids, history_rows: np.ndarray, consumed: list[np.ndarray] | None = None, batch: int = 2048) -> np.ndarray:
        """User vectors ``[U, dim]`` from ids (unknown ids are fine) and history item rows: the towers' unit
        vector, then (with a collaborative term) ``gamma`` times the ALS factors solved from ``consumed``
        (every item row each user consumed; None: the history rows)."""
        out = []
        user_ids = np.asarray(user_ids).astype(str)
        for start in range(0, len(user_ids), batch):
            inputs = user_inputs(user_ids[start:start + batch], history_rows[start:start + batch], self.table.vectors, self.table.tags)
            out.append(self.model.user_tower(inputs).numpy())
        towers = np.concatenate(out) if out else np.zeros((0, self.config.output_dim), np.float32)
        if self.collaborative is None:
            return towers
        return self.collaborative.user_part(towers, list(history_rows) if consumed is None else consumed)

    def item_vectors(self, table: ItemTable | None = None, batch: int = 4096) -> np.ndarray:
        """Item vectors ``[N, dim]`` for every row of ``table`` (default: the training table): the towers' unit
        vector, then (with a collaborative term) the item's ALS factors (for items fitted without: mapped from
        their content)."""
        table = table or self.table
        out = []
        for start in range(0, len(table), batch):
            rows = np.arange(start, min(start + batch, len(table)))
            out.append(self.model.item_tower(item_inputs(table.ids.astype(str), table.vectors, table.tags, rows)).numpy())
        towers = np.concatenate(out) if out else np.zeros((0, self.config.output_dim), np.float32)
        if self.collaborative is None:
            return towers
        return self.collaborative.item_part(towers, table.ids, collaborative_content(table))

    def build(self) -> "TrainedTwoTower":
        """Create every weight from the input shapes (before loading or restoring weights)."""
        self.model.build(model_input_shapes(self.table.vectors.shape[1], self.table.tags.shape[1], self.config.history_length))
        return self

    @property
    def trend(self) -> TrendSetting:
        """The trend boost chosen on validation (weight 0, no boost, for models trained without one)."""
        return TrendSetting.from_dict(self.history.get("trend"))

    # -------------------------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            meta = {"config": dataclasses.asdict(self.config), "user_vocabulary": self.model.user_tower.user_vocabulary,
                    "item_vocabulary": self.model.item_tower.item_vocabulary, "tag_dim": int(self.table.tags.shape[1]),
                    "vector_dim": int(self.table.vectors.shape[1])}
            (tmp / "config.json").write_text(json.dumps(meta))
            self.model.save_weights(str(tmp / "weights"))
            self.table.save(tmp / "item_table.npz")
            if self.pca is not None:
                self.pca.save(tmp / "pca.npz")
            (tmp / "history.json").write_text(json.dumps(self.history, indent=2, default=str))
            if self.collaborative is not None:
                self.collaborative.save(tmp / COLLABORATIVE_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TrainedTwoTower":
        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory}: not a trained model (no config.json); run `vistaste train` first")
        meta = json.loads((directory / "config.json").read_text())
        config = TrainConfig.from_dict(meta["config"])
        table = ItemTable.load(directory / "item_table.npz")
        model = build_model(config, meta["user_vocabulary"], meta["item_vocabulary"])
        pca = VectorPCA.load(directory / "pca.npz") if (directory / "pca.npz").exists() else None
        collaborative = Collaborative.load(directory / COLLABORATIVE_FILE) if (directory / COLLABORATIVE_FILE).exists() else None
        trained = cls(config, model, table, pca, json.loads((directory / "history.json").read_text()), collaborative)
        trained.build()
        model.load_weights(str(directory / "weights")).expect_partial()
        return trained

    def project_vectors(self, raw_vectors: np.ndarray) -> np.ndarray:
        """Raw item vectors (as embedded) -> the model's input space (applies the saved PCA)."""
        return self.pca.transform(raw_vectors) if self.pca is not None else raw_vectors.astype(np.float32)


def build_model(config: TrainConfig, user_vocabulary, item_vocabulary) -> TwoTowerModel:
    # No item with enough clicks for an id of its own (a tiny or brand-new log): the tower is content-only.
    use_item_id = config.use_item_id and len(item_vocabulary) > 0
    item_tower = ItemTower(list(item_vocabulary), config.output_dim, config.hidden, use_item_id, config.id_dim, config.id_dropout,
                           config.use_tags)
    user_tower = UserTower(list(user_vocabulary), config.output_dim, config.hidden, config.history_units, config.use_user_id, config.id_dim,
                           config.id_dropout, item_tower=item_tower if config.history_in_item_space else None)
    return TwoTowerModel(user_tower, item_tower, config.temperature, config.logq_correction, config.remove_accidental_hits,
                         config.logq_strength)
