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
from vistaste.data.seen import SeenPolicy
from vistaste.data.split import SplitTooSmall, split_log
from vistaste.data.trends import TrendSetting
from vistaste.data.validation import load_dataset
from vistaste.towers.choosing import choose_collaborative, choose_trend_boost, validation_scores
from vistaste.towers.collaborative import Collaborative
from vistaste.towers.config import REFIT_MODES, VALIDATION_METRIC, TrainConfig  # noqa: F401  (TrainConfig is re-exported)
from vistaste.towers.features import PAD, ItemTable, histories_before_each, positives
from vistaste.towers.inputs import item_inputs, user_inputs
from vistaste.towers.model import TwoTowerModel
from vistaste.towers.slices import Slice, available_items, build_slices, positive_rows, validation_split
from vistaste.towers.trained import VECTOR_TABLES, TrainedTwoTower, build_model, find_vectors, load_item_table  # noqa: F401  (re-exported)


def _dataset(users: np.ndarray, history_rows: np.ndarray, item_rows: np.ndarray, probability: np.ndarray, table: ItemTable,
             batch_size: int, seed: int, weights: np.ndarray | None = None, uniform_negatives: int = 0) -> tf.data.Dataset:
    """Shuffled batches of ``{"user": <user-tower inputs>, "item": <item-tower inputs + row, sampling_probability,
    sample_weight>}``. Example indices are shuffled and each batch gathers its columns at once (shuffling
    whole examples one by one cost more than the rest of the pipeline), in the order a shuffle of the
    examples themselves would give.

    With ``uniform_negatives`` n > 0 each batch also holds ``"negatives"``: n catalog rows drawn uniformly
    (with replacement), as item-tower inputs. Every candidate's ``sampling_probability`` is then its expected
    share of the batch's b + n candidates up to a constant, p + n / (b N) for an item with share p of the
    positives in a catalog of N items, which is what the logQ correction needs under the mix."""
    vectors, tags, ids = tf.constant(table.vectors), tf.constant(table.tags), tf.constant(table.ids.astype(str))
    catalog = len(table)
    row_probability = np.zeros(catalog, np.float32)
    row_probability[item_rows] = probability
    row_probability = tf.constant(row_probability)
    columns = {"user_id": users.astype(str), "history_rows": history_rows, "item_row": item_rows,
               "probability": probability.astype(np.float32)}
    if weights is not None:
        columns["weight"] = weights.astype(np.float32)
    columns = {k: tf.constant(v) for k, v in columns.items()}

    def gather(index, negative_seed=None):
        example = {k: tf.gather(v, index) for k, v in columns.items()}
        item = example["item_row"]
        out = {"user": user_inputs(example["user_id"], example["history_rows"], vectors, tags),
               "item": {**item_inputs(ids, vectors, tags, item), "row": item, "sampling_probability": example["probability"]}}
        if "weight" in example:
            out["item"]["sample_weight"] = example["weight"]
        if negative_seed is not None:
            rows = tf.random.stateless_uniform([uniform_negatives], negative_seed, 0, catalog, dtype=tf.int64)
            extra = uniform_negatives / (tf.cast(tf.shape(index)[0], tf.float32) * catalog)
            out["item"]["sampling_probability"] += extra
            out["negatives"] = {**item_inputs(ids, vectors, tags, rows), "row": rows,
                                "sampling_probability": tf.gather(row_probability, rows) + extra}
        return out

    order = tf.data.Dataset.range(len(users)).shuffle(len(users), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if uniform_negatives > 0:  # a fresh stateless seed per batch, other ones each epoch
        order = tf.data.Dataset.zip(order, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2))
    return order.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)


class _Validation(tf_keras.callbacks.Callback):
    """Validation scores after each epoch; early stopping on ``VALIDATION_METRIC`` with patience."""

    def __init__(self, trained: "TrainedTwoTower", val_slice: Slice, available: np.ndarray, patience: int, state: dict, on_epoch):
        super().__init__()
        self.trained, self.val_slice, self.available, self.patience, self.state, self.on_epoch = (trained, val_slice, available, patience,
                                                                                                  state, on_epoch)

    def on_epoch_end(self, epoch, logs=None):
        values = validation_scores(self.trained, self.val_slice, self.available)
        value = values[VALIDATION_METRIC]
        if value > self.state["best_value"]:
            self.state.update(best_value=value, best_epoch=epoch, wait=0, best_weights=self.trained.model.get_weights())
        else:
            self.state["wait"] += 1
            if self.state["wait"] >= self.patience:
                self.model.stop_training = True
        self.on_epoch(epoch, logs or {}, values)


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


def vocabularies(pos: pd.DataFrame, config: TrainConfig) -> tuple[list[str], list[str]]:
    """(user ids, item ids with at least ``min_item_interactions`` positives) for the id embeddings."""
    counts = pos["item_id"].value_counts()
    return sorted(pos["user_id"].unique()), sorted(counts.index[counts >= config.min_item_interactions])


# Training steps per call into the compiled training function, to save a Python round trip per step (at
# batch 512 about 1.1-1.3x examples/s over 1 in interleaved runs on a loaded 2-core machine; 4-16 looked
# alike). Callbacks here act per epoch only, and an epoch's last call runs just the steps left, so the
# steps, their order and the logged loss (the epoch's last batch) are unchanged.
STEPS_PER_EXECUTION = 8
# ...but a fit of fewer steps than this runs one step per call: the loop costs a second trace of the training
# step (about 2 s a fit on 2 cores: a 3-epoch train and refit of test_serving's world took 14.7 s with the loop
# and 10.8 s without, the same weights), more than the ~1 ms a step it saves at batch 512 below ~2,000 steps.
LOOP_MIN_STEPS = 2_000


def steps_per_execution(examples: int, batch_size: int, epochs: int) -> int:
    """Steps per call for a fit of ``epochs`` over ``examples``: :data:`STEPS_PER_EXECUTION`, or 1 for a fit
    shorter than :data:`LOOP_MIN_STEPS` steps (the same steps either way, in the same order)."""
    return STEPS_PER_EXECUTION if -(-examples // batch_size) * epochs >= LOOP_MIN_STEPS else 1


def compile_model(model: TwoTowerModel, config: TrainConfig, steps_per_execution: int = STEPS_PER_EXECUTION) -> TwoTowerModel:
    """Compile for training: Adam at ``config.learning_rate``, ``steps_per_execution`` steps per call. A built
    model gets its optimizer's variables now: a training function that creates variables is traced twice
    (about 2 s each on 2 cores: a new model's first epoch on the walkthrough's world took 5.7 s, 2.0 s so)."""
    model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate), steps_per_execution=steps_per_execution)
    if model.built:
        model.optimizer.build(model.trainable_variables)
    return model


def _new_trained(config: TrainConfig, pos: pd.DataFrame, table: ItemTable, pca: VectorPCA | None, epochs: int,
                 steps_per_call: int | None = None) -> "TrainedTwoTower":
    """A new model for ``pos``'s users and items, its weights built from shapes and compiled for ``epochs``
    (``steps_per_call``: None, as :func:`steps_per_execution` chooses for them)."""
    trained = TrainedTwoTower(config, build_model(config, *vocabularies(pos, config)), table, pca, {}).build()
    compile_model(trained.model, config, steps_per_call or steps_per_execution(len(pos), config.batch_size, epochs))
    return trained


def recency_weights(pos: pd.DataFrame, config: TrainConfig) -> np.ndarray | None:
    """Each training example's weight 2^(-age / recency_half_life_days), scaled to mean 1; None when the
    option is off (every example counts the same).

    Age is measured from the point of prediction: the log's last click for a global temporal split (all
    users are predicted after it), each user's own last click for a per-user split (leave-last: a user
    whose history ended months ago is predicted right after it, and their clicks are not stale).
    """
    if config.recency_half_life_days is None or not len(pos):
        return None
    end = pos.groupby("user_id")["timestamp"].transform("max") if config.leave_last is not None else pos["timestamp"].max()
    age_days = (end - pos["timestamp"]).dt.total_seconds().to_numpy() / 86_400
    weights = np.power(2.0, -age_days / config.recency_half_life_days)
    return weights / weights.mean()


def fit_on_logs(logs: pd.DataFrame, table: ItemTable, config: TrainConfig, epochs: int, initial: TrainedTwoTower | None = None,
                pca: VectorPCA | None = None, seed: int | None = None, collaborative_gamma: float | None = None) -> TrainedTwoTower:
    """Fixed-epoch training on a log, optionally warm-starting from ``initial`` (its vocabularies are
    kept: users and items new since then are out-of-vocabulary and served by history and pixels).
    Used for the refit, and by the online simulator; `train` adds the split, early stopping and resume.

    The collaborative term is refit on the same log with weight ``collaborative_gamma`` (None: ``initial``'s
    weight, no term without one; 0: no term), as `train`'s refit does with the weight chosen on validation."""
    if collaborative_gamma is None:
        collaborative_gamma = initial.collaborative.gamma if initial is not None and initial.collaborative is not None else 0.0
    seed = config.seed if seed is None else seed
    pos, item_rows, history_rows, probability, _ = training_examples(logs, table, config.history_length)
    if initial is None:
        trained = _new_trained(config, pos, table, pca, epochs)
    else:
        trained = TrainedTwoTower(config, initial.model, table, initial.pca, {})
    data = _dataset(pos["user_id"].to_numpy(), history_rows, item_rows, probability, table, config.batch_size,
                    seed, recency_weights(pos, config), config.uniform_negatives)
    trained.model.fit(data, epochs=epochs, verbose=0)
    trained.history = {"train_examples": len(pos), "epochs": epochs}
    if collaborative_gamma > 0:
        trained.collaborative = Collaborative.fit(positive_rows(logs, table), table, collaborative_gamma, seed)
    return trained


def logs_for_refit(split, refit: str) -> pd.DataFrame:
    """The events the shipped model trains on under ``refit`` (:data:`REFIT_MODES`): everything before the
    test cut (``before-test``), every event (``all``) or the training part only (``none``)."""
    if refit not in REFIT_MODES:
        raise ValueError(f"refit must be one of {', '.join(REFIT_MODES)}, got {refit!r}")
    if refit == "none":
        return split.train
    return pd.concat([split.train, split.validation] + ([split.test] if refit == "all" else []))


def prepare(dataset_dir: Path, config: TrainConfig, vectors_path: Path | None = None, extra_logs: list[pd.DataFrame] | None = None):
    """Load, validate, split and project: returns (split, raw table, projected table, pca)."""
    tables, report = load_dataset(dataset_dir, on_error="raise", check_images=False)
    logs = tables["interactions"]
    if extra_logs:
        logs = pd.concat([logs, *extra_logs], ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
    raw_table = load_item_table(dataset_dir, tables["catalog"], vectors_path)
    split = split_log(logs, config.split_spec())
    pca = None
    if raw_table.vectors.shape[1] > config.input_dim:
        pca = VectorPCA(min(config.input_dim, len(raw_table) - 1), whiten=config.whiten).fit(raw_table.vectors)
    return split, raw_table, raw_table.with_projection(pca), pca


def validation_slice(split, table: ItemTable, config: TrainConfig, policy: SeenPolicy | None = None) -> Slice:
    """The warm users of the validation period (train -> validation); too few is an error that says what to change."""
    slices = {s.name: s for s in build_slices(validation_split(split), table, config.history_length, policy)}
    warm = slices.get("warm users")
    n = len(warm) if warm is not None else 0
    if n < config.min_val_users:
        raise SplitTooSmall(f"validation has {n} evaluable users (history before {split.val_start} and a new click after it), fewer than "
                            f"min_val_users={config.min_val_users}: early stopping would pick noise. Give validation more of the log "
                            f"(--val-fraction, now {config.val_fraction}) or lower --min-val-users.")
    return warm


def train(dataset_dir: str | Path, out_dir: str | Path, config: TrainConfig | None = None, vectors_path: str | Path | None = None,
          extra_logs: list[pd.DataFrame] | None = None, verbose: bool = True, log=print,
          policy: SeenPolicy | None = None) -> TrainedTwoTower:
    """Train on ``dataset_dir`` (catalog, interactions, item vectors) and save to ``out_dir``.

    1. fit on the training part, scoring the validation part after each epoch (early stopping with
       patience on validation nDCG@50, under the seen-item policy evaluation uses);
    2. refit from scratch with the chosen number of epochs on ``config.refit``'s data (default:
       everything before the test cut), so the most recent events are learned too.
    """
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    config = config or TrainConfig()
    tf_keras.utils.set_random_seed(config.seed)
    split, raw_table, table, pca = prepare(dataset_dir, config, Path(vectors_path) if vectors_path else None, extra_logs)

    train_pos, item_rows, history_rows, probability, dropped = training_examples(split.train, table, config.history_length)
    if dropped:
        log(f"note: {dropped} training positives refer to items without a vector (failed embedding?) and are skipped")
    if len(train_pos) < 2:
        raise ValueError(f"{dataset_dir}: only {len(train_pos)} training clicks before {split.val_start}; need more history to train")
    val_slice = validation_slice(split, table, config, policy)
    val_available = available_items(table, split.test_start)

    trained = _new_trained(config, train_pos, table, pca, config.epochs)
    model = trained.model
    data = _dataset(train_pos["user_id"].to_numpy(), history_rows, item_rows, probability, table, config.batch_size, config.seed,
                    recency_weights(train_pos, config), config.uniform_negatives)

    # Resume: restore the last finished epoch's weights and optimizer state if a compatible run stopped.
    ckpt_dir = out_dir.with_name(f".{out_dir.name}.checkpoints")
    fingerprint = json.dumps({**dataclasses.asdict(config), "examples": len(train_pos), "items": len(table)}, sort_keys=True, default=str)
    # Every weight (the model's, built by _new_trained, and the optimizer's, by compile_model) exists before restoring.
    epoch_var = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=1)
    state = {"best_value": -1.0, "best_epoch": -1, "wait": 0, "best_weights": None, "epochs": []}
    kept = ("best_value", "best_epoch", "wait", "epochs")
    if manager.latest_checkpoint and (ckpt_dir / "run.json").exists():
        saved = json.loads((ckpt_dir / "run.json").read_text())
        if saved["fingerprint"] == fingerprint and all(k in saved for k in kept):
            checkpoint.restore(manager.latest_checkpoint)
            state.update({k: saved[k] for k in kept})
            best = np.load(ckpt_dir / "best.npz")
            state["best_weights"] = [best[f"w{i}"] for i in range(len(best.files))]
            log(f"resuming after epoch {int(epoch_var.numpy())} (best validation {VALIDATION_METRIC} {state['best_value']:.4f})")
    initial_epoch = int(epoch_var.numpy())

    timer = {"start": time.perf_counter()}

    def on_epoch(epoch, logs, values):
        seconds = time.perf_counter() - timer["start"]
        record = {"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan)), **{f"val_{k}": v for k, v in values.items()},
                  "seconds": seconds, "examples_per_second": len(train_pos) / seconds}
        state["epochs"].append(record)
        if verbose:
            log(f"epoch {epoch + 1:>3}/{config.epochs}  loss {record['loss']:.2f}  val recall@50 {values['recall@50']:.4f}  "
                f"nDCG@50 {values['ndcg@50']:.4f}  {record['examples_per_second']:,.0f} examples/s")
        epoch_var.assign(epoch + 1)
        manager.save()
        with atomic_path(ckpt_dir / "best.npz") as tmp, open(tmp, "wb") as stream:
            np.savez(stream, **{f"w{i}": w for i, w in enumerate(state["best_weights"])})
        write_json({"fingerprint": fingerprint, **{k: state[k] for k in kept}}, ckpt_dir / "run.json")
        timer["start"] = time.perf_counter()

    stopped_early = state["wait"] >= config.patience
    if initial_epoch < config.epochs and not stopped_early:
        callback = _Validation(trained, val_slice, val_available, config.patience, state, on_epoch)
        model.fit(data, epochs=config.epochs, initial_epoch=initial_epoch, callbacks=[callback], verbose=0)
    best_epochs = state["best_epoch"] + 1
    trend = {**TrendSetting(weight=0.0).to_dict(), "chosen_by": "off (trend_boost=False)"}
    collaborative = {"beta": 0.0, "gamma": 0.0, "chosen_by": "off (collaborative=False)"}
    if config.collaborative and state["best_weights"] is not None:
        model.set_weights(state["best_weights"])
        trained.collaborative, collaborative = choose_collaborative(trained, val_slice, val_available, split.train)
        if verbose:
            values = {r["beta"]: r["value"] for r in collaborative["validation"]}
            log(f"collaborative term chosen on validation: beta {collaborative['beta']:g} ({VALIDATION_METRIC} "
                f"{values[collaborative['beta']]:.4f} vs {values[0.0]:.4f} for the towers alone)")
    if config.trend_boost and state["best_weights"] is not None:
        model.set_weights(state["best_weights"])
        trend = choose_trend_boost(trained, val_slice, val_available, split.train)
        if verbose:
            chosen_value = next(r['value'] for r in trend['validation'] if r['chosen'])
            log(f"trend boost chosen on validation: {TrendSetting.from_dict(trend).describe()} ({VALIDATION_METRIC} {chosen_value:.4f} "
                f"vs {trend['validation'][0]['value']:.4f} without; {sum(not r['allowed'] for r in trend['validation'])} "
                f"boosts over the breadth floor)")
    refit_logs = logs_for_refit(split, config.refit)
    if config.refit == "none":
        if state["best_weights"] is not None:
            model.set_weights(state["best_weights"])
        final, examples = trained, len(train_pos)
    else:
        if verbose:
            log(f"refit on {'everything before the test cut' if config.refit == 'before-test' else 'every event'} "
                f"for the chosen {best_epochs} epoch(s)")
        tf_keras.utils.set_random_seed(config.seed)
        # ALS is refit on the same events, with the weight chosen on validation.
        gamma = trained.collaborative.gamma if trained.collaborative is not None else 0.0
        final = fit_on_logs(refit_logs, table, config, best_epochs, pca=pca, collaborative_gamma=gamma)
        examples = final.history["train_examples"]
    final.history = {
        "epochs": state["epochs"], "best_epoch": best_epochs, f"best_val_{VALIDATION_METRIC}": state["best_value"],
        "validation_metric": VALIDATION_METRIC, "refit": config.refit, "train_examples": examples,
        "skipped_positives_without_vector": dropped, "split": split.describe(), "validation_users": len(val_slice),
        "trained_until": str(refit_logs["timestamp"].max()), "dataset": str(dataset_dir), "trend": trend,
        "collaborative": collaborative,
    }
    final.save(out_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return final
