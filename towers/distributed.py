"""Data-parallel training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy``.

Every worker runs the same program with its own ``TF_CONFIG`` (read by TensorFlow's cluster resolver,
not here), e.g. on two machines::

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'

What each worker does (:func:`fit_distributed`):

- computes the log's global statistics exactly as single-machine training does (:func:`training_examples`,
  :func:`vocabularies`, :func:`recency_weights`): id vocabularies, each item's share of positives for the
  logQ correction, each example's history and recency weight. On a log this size every worker reads the
  whole log for them; at scale they are one prior pass whose output every worker reads;
- trains on its own disjoint shard of the examples (:func:`worker_shard`: a permutation every worker draws
  from the same seed, cut into equal blocks), in batches of ``config.batch_size / workers``;
- keeps a full copy of both towers; after every step the gradients are summed over all workers
  (all-reduce), so every copy takes the same update and the weights stay identical.

What changes against one machine with the same ``batch_size``: nothing in the update. The steps, their
size (the global batch), the gradient's scale (the task's loss is a sum over examples) and the negatives
are the same: each worker's in-batch softmax scores its users against the candidates of every worker
(:func:`vistaste.towers.model.global_candidates` gathers them), so the summed loss and gradient are one
machine's on the same global batch (``tests/test_distributed.py`` checks this against one replica). What
differs is only which examples meet in a batch: each worker draws its share from its own shard.
"""
from __future__ import annotations

import math
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
import tf_keras

from vistaste.data.pca import VectorPCA
from vistaste.towers.config import TrainConfig
from vistaste.towers.features import ItemTable
from vistaste.towers.trained import TrainedTwoTower
from vistaste.towers.training import (
    _dataset,
    _new_trained,
    logs_for_refit,
    prepare,
    recency_weights,
    training_examples,
)


def worker_shard(examples: int, workers: int, index: int, seed: int) -> np.ndarray:
    """Sorted example indices of worker ``index`` of ``workers``: disjoint blocks of one seeded permutation,
    all of ``examples // workers`` indices (every worker must run the same number of steps; at most
    ``workers - 1`` examples are left out).

    >>> worker_shard(7, 2, 0, seed=0).size, np.intersect1d(worker_shard(7, 2, 0, 0), worker_shard(7, 2, 1, 0)).size
    (3, 0)
    """
    if workers < 1 or not 0 <= index < workers:
        raise ValueError(f"index must be in [0, workers), got index {index} of {workers} workers")
    size = examples // workers
    if size == 0:
        raise ValueError(f"{examples} training examples cannot be shared by {workers} workers: each needs at least one")
    order = np.random.default_rng(seed).permutation(examples)
    return np.sort(order[index * size:(index + 1) * size])


def local_cluster(workers: int) -> list[dict]:
    """``TF_CONFIG`` for each of ``workers`` processes on this machine, on free localhost ports (worker 0 is
    the chief): to try multi-worker training on one machine, as the tests and benchmarks do."""
    sockets = [socket.socket() for _ in range(workers)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        cluster = {"worker": [f"localhost:{s.getsockname()[1]}" for s in sockets]}
    finally:
        for s in sockets:
            s.close()
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(workers)]


def _cluster(strategy: tf.distribute.Strategy) -> tuple[int, int, bool]:
    """(workers, this worker's index, whether it is the chief) from the strategy's cluster resolver."""
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    if chiefs + workers == 0:  # no TF_CONFIG: one local worker
        return 1, 0, True
    index = (0 if resolver.task_type == "chief" else resolver.task_id + chiefs)
    return chiefs + workers, index, index == 0


def fit_distributed(logs: pd.DataFrame, table: ItemTable, config: TrainConfig, epochs: int, pca: VectorPCA | None = None,
                    seed: int | None = None, strategy: tf.distribute.Strategy | None = None) -> TrainedTwoTower:
    """Fixed-epoch training on ``logs`` like :func:`vistaste.towers.training.fit_on_logs`, data-parallel over the
    workers of ``strategy`` (default: a ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``; one local worker
    without it). Every worker calls it with the same arguments and gets the same trained model back.
    ``config.batch_size`` is the global batch and must divide by the number of replicas."""
    seed = config.seed if seed is None else seed
    tf_keras.utils.set_random_seed(seed)
    strategy = strategy or tf.distribute.MultiWorkerMirroredStrategy()
    workers, index, _ = _cluster(strategy)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size must divide by the {replicas} replicas (one per worker on CPUs), got {config.batch_size}")
    pos, item_rows, history_rows, probability, _ = training_examples(logs, table, config.history_length)
    weights = recency_weights(pos, config)
    users = pos["user_id"].to_numpy()
    shard = worker_shard(len(pos), workers, index, seed)
    per_replica = config.batch_size // replicas
    steps = math.ceil(len(shard) / (per_replica * (replicas // workers)))

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        if (context.num_input_pipelines, context.input_pipeline_id) != (workers, index):
            raise RuntimeError(f"input pipeline {context.input_pipeline_id} of {context.num_input_pipelines}, "
                               f"expected worker {index} of {workers}")
        return _dataset(users[shard], history_rows[shard], item_rows[shard], probability[shard], table,
                        context.get_per_replica_batch_size(config.batch_size), seed,
                        None if weights is None else weights[shard], config.uniform_negatives).repeat()

    with strategy.scope():
        # One step per call: with several steps in one compiled loop, the all-reduce of the id embeddings'
        # sparse gradients failed across workers (TF 2.20: "Shape mismatch in the collective instance").
        # Built as a single machine's model is (weights from shapes): the same seed starts both from the same weights.
        model = _new_trained(config, pos, table, pca, epochs, steps_per_call=1).model
    data = strategy.distribute_datasets_from_function(dataset)
    fit = model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
    history = {"train_examples": workers * len(shard), "worker_examples": len(shard), "workers": workers, "epochs": epochs,
               "global_batch": config.batch_size, "per_replica_batch": per_replica, "steps_per_epoch": steps,
               "strategy": type(strategy).__name__, "loss": [float(v) for v in fit.history.get("loss", [])]}
    return TrainedTwoTower(config, model, table, pca, history)


def train_distributed(dataset_dir: str | Path, out_dir: str | Path, config: TrainConfig, vectors_path: str | Path | None = None,
                      extra_logs: list[pd.DataFrame] | None = None, strategy: tf.distribute.Strategy | None = None) -> TrainedTwoTower:
    """Train on ``dataset_dir`` for exactly ``config.epochs`` epochs on every worker of the cluster; the chief writes
    the model to ``out_dir`` (the same artifact as `vistaste train`'s).

    The logs trained on follow ``config.refit`` as after single-machine training: everything before the test
    cut (``before-test``), every event (``all``) or the training part only (``none``). The epoch count is
    given, not chosen on validation: choose it with a single-machine run on a sample (`vistaste train`).
    ``extra_logs`` (e.g. the feedback store's export) join the interactions, as in single-machine training."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    split, _, table, pca = prepare(dataset_dir, config, Path(vectors_path) if vectors_path else None, extra_logs)
    logs = logs_for_refit(split, config.refit)
    strategy = strategy or tf.distribute.MultiWorkerMirroredStrategy()
    trained = fit_distributed(logs, table, config, config.epochs, pca=pca, strategy=strategy)
    trained.history.update(refit=config.refit, split=split.describe(), dataset=str(dataset_dir),
                           trained_until=str(logs["timestamp"].max()))
    _, index, chief = _cluster(strategy)
    # Every worker saves (a save may need all of them); only the chief's copy is kept.
    target = out_dir if chief else out_dir.with_name(f".{out_dir.name}.worker-{index}")
    trained.save(target)
    if not chief:
        shutil.rmtree(target, ignore_errors=True)
    return trained
