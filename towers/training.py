"""`vistaste train`: fit the two-tower model on click logs with a time-based split.

Artifacts (one directory, written atomically): ``config.json`` (every hyperparameter and vocabulary
size), ``weights.*`` (TF checkpoint of both towers), ``item_table.npz`` (row-aligned ids, projected
vectors and tags), ``pca.npz`` (projection of raw item vectors, if used), ``history.json`` (per-epoch
loss, validation recall, examples/s) and ``split.json``. Progress is printed per epoch; a killed run
resumes from the last finished epoch (checkpoints beside the output).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from vistaste.data.io import atomic_path, write_json
from vistaste.data.pca import VectorPCA
from vistaste.data.split import time_split
from vistaste.data.validation import load_dataset
from vistaste.towers import metrics
from vistaste.towers.features import PAD, ItemTable, histories_before_each, latest_histories, positives
from vistaste.towers.item_tower import ItemTower
from vistaste.towers.model import TwoTowerModel
from vistaste.towers.user_tower import UserTower

VECTOR_TABLES = ("embeddings.parquet", "item_vectors.parquet")


@dataclasses.dataclass
class TrainConfig:
    """Every knob of a training run; saved with the model."""

    output_dim: int = 64
    hidden: tuple[int, ...] = (256,)
    history_length: int = 20
    history_units: int = 64
    input_dim: int = 128  # raw item vectors wider than this are reduced by PCA fitted on the catalog
    whiten: bool = False  # whitening gives low-variance (noise) components the same weight as the top ones
    use_item_id: bool = False  # off by default: with few clicks per item, id embeddings memorise instead of generalising
    use_user_id: bool = True
    id_dim: int = 16
    id_dropout: float = 0.5
    use_tags: bool = True
    history_in_item_space: bool = True  # embed history items with the (shared) item tower, see UserTower
    temperature: float = 0.05
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    batch_size: int = 512
    learning_rate: float = 3e-3
    epochs: int = 30
    patience: int = 4
    test_days: float = 5
    val_days: float = 3
    seed: int = 0

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        for name in ("output_dim", "history_length", "batch_size", "epochs", "input_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


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

    def __init__(self, config: TrainConfig, model: TwoTowerModel, table: ItemTable, pca: VectorPCA | None, history: dict):
        self.config, self.model, self.table, self.pca, self.history = config, model, table, pca, history

    # -------------------------------------------------------------------------------- features
    def history_features(self, history_rows: np.ndarray) -> dict[str, tf.Tensor]:
        rows = np.asarray(history_rows, dtype=np.int64)
        mask = rows != PAD
        safe = np.where(mask, rows, 0)
        return {"history": tf.constant(self.table.vectors[safe] * mask[..., None]), "history_tags": tf.constant(self.table.tags[safe] * mask[..., None]),
                "history_mask": tf.constant(mask)}

    def user_vectors(self, user_ids, history_rows: np.ndarray, batch: int = 2048) -> np.ndarray:
        """Unit user vectors ``[U, dim]`` from ids (unknown ids are fine) and history item rows."""
        out = []
        user_ids = np.asarray(user_ids).astype(str)
        for start in range(0, len(user_ids), batch):
            inputs = {"user_id": tf.constant(user_ids[start:start + batch]), **self.history_features(history_rows[start:start + batch])}
            out.append(self.model.user_tower(inputs).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.output_dim), np.float32)

    def item_vectors(self, table: ItemTable | None = None, batch: int = 4096) -> np.ndarray:
        """Unit item vectors ``[N, dim]`` for every row of ``table`` (default: the training table)."""
        table = table or self.table
        out = []
        for start in range(0, len(table), batch):
            inputs = {"item_id": tf.constant(table.ids[start:start + batch].astype(str)), "vector": tf.constant(table.vectors[start:start + batch]),
                      "tags": tf.constant(table.tags[start:start + batch])}
            out.append(self.model.item_tower(inputs).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.config.output_dim), np.float32)

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
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "TrainedTwoTower":
        directory = Path(directory)
        if not (directory / "config.json").exists():
            raise FileNotFoundError(f"{directory}: not a trained model (no config.json); run `vistaste train` first")
        meta = json.loads((directory / "config.json").read_text())
        config = TrainConfig(**meta["config"])
        table = ItemTable.load(directory / "item_table.npz")
        model = build_model(config, meta["user_vocabulary"], meta["item_vocabulary"])
        pca = VectorPCA.load(directory / "pca.npz") if (directory / "pca.npz").exists() else None
        trained = cls(config, model, table, pca, json.loads((directory / "history.json").read_text()))
        trained.user_vectors(["x"], np.full((1, config.history_length), PAD))  # build the layers
        trained.item_vectors(dataclasses.replace(table, ids=table.ids[:1], vectors=table.vectors[:1], tags=table.tags[:1]))
        model.load_weights(str(directory / "weights")).expect_partial()
        return trained

    def project_vectors(self, raw_vectors: np.ndarray) -> np.ndarray:
        """Raw item vectors (as embedded) -> the model's input space (applies the saved PCA)."""
        return self.pca.transform(raw_vectors) if self.pca is not None else raw_vectors.astype(np.float32)


def build_model(config: TrainConfig, user_vocabulary, item_vocabulary) -> TwoTowerModel:
    item_tower = ItemTower(list(item_vocabulary), config.output_dim, config.hidden, config.use_item_id, config.id_dim, config.id_dropout, config.use_tags)
    user_tower = UserTower(list(user_vocabulary), config.output_dim, config.hidden, config.history_units, config.use_user_id, config.id_dim, config.id_dropout,
                           item_tower=item_tower if config.history_in_item_space else None)
    return TwoTowerModel(user_tower, item_tower, config.temperature, config.logq_correction, config.remove_accidental_hits)


def _dataset(users: np.ndarray, history_rows: np.ndarray, item_rows: np.ndarray, probability: np.ndarray, table: ItemTable,
             batch_size: int, seed: int) -> tf.data.Dataset:
    vectors, tags, ids = tf.constant(table.vectors), tf.constant(table.tags), tf.constant(table.ids.astype(str))

    def gather(example):
        rows = example["history_rows"]
        mask = rows != PAD
        safe = tf.maximum(rows, 0)
        maskf = tf.cast(mask, tf.float32)[..., None]
        item = example["item_row"]
        return {
            "user": {"user_id": example["user_id"], "history": tf.gather(vectors, safe) * maskf, "history_tags": tf.gather(tags, safe) * maskf,
                     "history_mask": mask},
            "item": {"item_id": tf.gather(ids, item), "row": item, "vector": tf.gather(vectors, item), "tags": tf.gather(tags, item),
                     "sampling_probability": example["probability"]},
        }

    data = tf.data.Dataset.from_tensor_slices({"user_id": users.astype(str), "history_rows": history_rows, "item_row": item_rows,
                                               "probability": probability.astype(np.float32)})
    return data.shuffle(len(users), seed=seed, reshuffle_each_iteration=True).batch(batch_size).map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


@dataclasses.dataclass
class EvalSet:
    """Users to score at one moment: ids, history rows before it, and their relevant item rows."""

    user_ids: np.ndarray
    history_rows: np.ndarray
    relevant: list[np.ndarray]
    candidate_mask: np.ndarray  # items that exist at that moment


def build_eval_set(history_events: pd.DataFrame, target_events: pd.DataFrame, table: ItemTable, length: int, until: pd.Timestamp) -> EvalSet:
    """Users with positives in ``target_events``; history from ``history_events`` (all earlier)."""
    target = positives(target_events)
    target = target.assign(row=table.rows(target["item_id"].to_numpy(), unknown="pad"))
    target = target[target["row"] != PAD]
    users = np.array(sorted(target["user_id"].unique()), dtype=object)
    hist = positives(history_events)
    hist_rows = table.rows(hist["item_id"].to_numpy(), unknown="pad")
    history_rows = latest_histories(hist[hist_rows != PAD], hist_rows[hist_rows != PAD], users, length)
    grouped = target.groupby("user_id")["row"].apply(lambda s: np.unique(s.to_numpy()))
    relevant = [grouped[u] for u in users]
    if table.created_at is not None:
        created = pd.to_datetime(pd.Series(table.created_at), utc=True)
        mask = (created.isna() | (created <= until)).to_numpy()
    else:
        mask = np.ones(len(table), bool)
    return EvalSet(users, history_rows, relevant, mask)


def recall_at(scores: np.ndarray, eval_set: EvalSet, k: int) -> float:
    """Recall@k over the items that exist, never counting what the user already clicked."""
    top = metrics.top_k(metrics.exclude(scores, eval_set.history_rows, eval_set.candidate_mask), k)
    return metrics.recall(top, eval_set.relevant, k)


class _ValidationRecall(tf_keras.callbacks.Callback):
    """Recall@k on the validation period after each epoch; early stopping keeps the best weights."""

    def __init__(self, trained: TrainedTwoTower, eval_set: EvalSet, k: int, patience: int, state: dict, on_epoch):
        super().__init__()
        self.trained, self.eval_set, self.k, self.patience, self.state, self.on_epoch = trained, eval_set, k, patience, state, on_epoch

    def on_epoch_end(self, epoch, logs=None):
        scores = self.trained.user_vectors(self.eval_set.user_ids, self.eval_set.history_rows) @ self.trained.item_vectors().T
        recall = recall_at(scores, self.eval_set, self.k)
        logs = logs or {}
        logs[f"val_recall@{self.k}"] = recall
        if recall > self.state["best_recall"]:
            self.state.update(best_recall=recall, best_epoch=epoch, wait=0, best_weights=self.trained.model.get_weights())
        else:
            self.state["wait"] += 1
            if self.state["wait"] >= self.patience:
                self.model.stop_training = True
        self.on_epoch(epoch, logs, recall)


def training_examples(logs: pd.DataFrame, table: ItemTable, history_length: int):
    """Positives with a vector, their item rows, the history before each, and each item's sampling
    probability (its share of positives, for the logQ correction). Also the count skipped for lack of a vector."""
    pos = positives(logs)
    item_rows = table.rows(pos["item_id"].to_numpy(), unknown="pad")
    dropped = int((item_rows == PAD).sum())
    pos, item_rows = pos[item_rows != PAD].reset_index(drop=True), item_rows[item_rows != PAD]
    history_rows = histories_before_each(pos, item_rows, history_length)
    counts = np.bincount(item_rows, minlength=len(table)).astype(np.float64)
    probability = (counts / max(counts.sum(), 1.0))[item_rows]
    return pos, item_rows, history_rows, probability, dropped


def fit_on_logs(logs: pd.DataFrame, table: ItemTable, config: TrainConfig, epochs: int, initial: TrainedTwoTower | None = None,
                pca: VectorPCA | None = None, seed: int | None = None) -> TrainedTwoTower:
    """Fixed-epoch training on a log, optionally warm-starting from ``initial`` (its vocabularies are
    kept: users and items new since then are out-of-vocabulary and served by history and pixels).
    Used by the online simulator; `train` adds the time split, early stopping and resume."""
    pos, item_rows, history_rows, probability, _ = training_examples(logs, table, config.history_length)
    if initial is None:
        model = build_model(config, sorted(pos["user_id"].unique()), sorted(pos["item_id"].unique()))
        model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate))
        trained = TrainedTwoTower(config, model, table, pca, {})
    else:
        trained = TrainedTwoTower(config, initial.model, table, initial.pca, {})
    data = _dataset(pos["user_id"].to_numpy(), history_rows, item_rows, probability, table, config.batch_size, config.seed if seed is None else seed)
    trained.model.fit(data, epochs=epochs, verbose=0)
    trained.history = {"train_examples": len(pos), "epochs": epochs}
    return trained


def prepare(dataset_dir: Path, config: TrainConfig, vectors_path: Path | None = None, extra_logs: list[pd.DataFrame] | None = None):
    """Load, validate, split and project: returns (split, raw table, projected table, pca, notes)."""
    tables, report = load_dataset(dataset_dir, on_error="raise", check_images=False)
    logs = tables["interactions"]
    if extra_logs:
        logs = pd.concat([logs, *extra_logs], ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    raw_table = load_item_table(dataset_dir, tables["catalog"], vectors_path)
    split = time_split(logs, config.test_days, config.val_days)
    pca = None
    if raw_table.vectors.shape[1] > config.input_dim:
        pca = VectorPCA(min(config.input_dim, len(raw_table) - 1), whiten=config.whiten).fit(raw_table.vectors)
    return split, raw_table, raw_table.with_projection(pca), pca


def train(dataset_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None, vectors_path: str | Path | None = None,
          extra_logs: list[pd.DataFrame] | None = None, verbose: bool = True, log=print) -> TrainedTwoTower:
    """Train on ``dataset_dir`` (catalog, interactions, item vectors) and save to ``out_dir``."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    config = config or TrainConfig()
    tf_keras.utils.set_random_seed(config.seed)
    split, raw_table, table, pca = prepare(dataset_dir, config, Path(vectors_path) if vectors_path else None, extra_logs)

    train_pos, item_rows, history_rows, probability, dropped = training_examples(split.train, table, config.history_length)
    if dropped:
        log(f"note: {dropped} training positives refer to items without a vector (failed embedding?) and are skipped")
    if len(train_pos) < 2:
        raise ValueError(f"{dataset_dir}: only {len(train_pos)} training clicks before {split.val_start}; need more history to train")

    model = build_model(config, sorted(train_pos["user_id"].unique()), sorted(train_pos["item_id"].unique()))
    trained = TrainedTwoTower(config, model, table, pca, {})
    model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate))
    data = _dataset(train_pos["user_id"].to_numpy(), history_rows, item_rows, probability, table, config.batch_size, config.seed)
    val_set = build_eval_set(split.train, split.validation, table, config.history_length, split.test_start)

    # Resume: restore the last finished epoch's weights and optimizer state if a compatible run stopped.
    ckpt_dir = out_dir.with_name(f".{out_dir.name}.checkpoints")
    fingerprint = json.dumps({**dataclasses.asdict(config), "examples": len(train_pos), "items": len(table)}, sort_keys=True, default=str)
    trained.user_vectors(["x"], np.full((1, config.history_length), PAD))  # build the layers before restoring
    trained.item_vectors(table)
    model.optimizer.build(model.trainable_variables)
    epoch_var = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=1)
    state = {"best_recall": -1.0, "best_epoch": -1, "wait": 0, "best_weights": None, "epochs": []}
    if manager.latest_checkpoint and (ckpt_dir / "run.json").exists():
        saved = json.loads((ckpt_dir / "run.json").read_text())
        if saved["fingerprint"] == fingerprint:
            checkpoint.restore(manager.latest_checkpoint)
            state.update(best_recall=saved["best_recall"], best_epoch=saved["best_epoch"], wait=saved["wait"], epochs=saved["epochs"])
            best = np.load(ckpt_dir / "best.npz")
            state["best_weights"] = [best[f"w{i}"] for i in range(len(best.files))]
            log(f"resuming after epoch {int(epoch_var.numpy())} (best val recall@50 {state['best_recall']:.4f})")
    initial_epoch = int(epoch_var.numpy())

    timer = {"start": time.perf_counter()}

    def on_epoch(epoch, logs, recall):
        seconds = time.perf_counter() - timer["start"]
        record = {"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan)), "val_recall@50": recall, "seconds": seconds,
                  "examples_per_second": len(train_pos) / seconds}
        state["epochs"].append(record)
        if verbose:
            log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {record['loss']:.2f}  val recall@50 {recall:.4f}  "
                f"{record['examples_per_second']:,.0f} examples/s")
        epoch_var.assign(epoch + 1)
        manager.save()
        with atomic_path(ckpt_dir / "best.npz") as tmp, open(tmp, "wb") as stream:
            np.savez(stream, **{f"w{i}": w for i, w in enumerate(state["best_weights"])})
        write_json({"fingerprint": fingerprint, **{k: state[k] for k in ("best_recall", "best_epoch", "wait", "epochs")}}, ckpt_dir / "run.json")
        timer["start"] = time.perf_counter()

    stopped_early = state["wait"] >= config.patience
    if initial_epoch < config.epochs and not stopped_early:
        callback = _ValidationRecall(trained, val_set, 50, config.patience, state, on_epoch)
        model.fit(data, epochs=config.epochs, initial_epoch=initial_epoch, callbacks=[callback], verbose=0)
    if state["best_weights"] is not None:
        model.set_weights(state["best_weights"])
    trained.history = {
        "epochs": state["epochs"], "best_epoch": state["best_epoch"] + 1, "best_val_recall@50": state["best_recall"],
        "train_examples": len(train_pos), "skipped_positives_without_vector": dropped, "split": split.describe(),
        "validation_users": len(val_set.user_ids), "dataset": str(dataset_dir),
    }
    trained.save(out_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return trained
