"""Multi-worker training (towers/distributed.py, `vistaste train --distributed`): two local worker processes
on localhost ports, checked against each other (synchronous data parallelism keeps one set of weights) and
against single-machine training (`fit_on_logs`) with the same global batch, epochs and seed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

from vistaste.bench.world import WorldConfig, generate_world
from vistaste.towers import metrics
from vistaste.towers.choosing import validation_scores
from vistaste.towers.distributed import local_cluster, worker_shard
from vistaste.towers.slices import available_items
from vistaste.towers.trained import TrainedTwoTower
from vistaste.towers.training import TrainConfig, _new_trained, fit_on_logs, prepare, training_examples, validation_slice

CONFIG = {"epochs": 8, "batch_size": 256, "test_days": 4, "refit": "none", "min_val_users": 5}
K = 50

WORKER = """
import json, sys
import numpy as np
from vistaste.towers.config import TrainConfig
from vistaste.towers.distributed import train_distributed
trained = train_distributed(sys.argv[1], sys.argv[2], TrainConfig(**json.loads(sys.argv[3])))
np.save(sys.argv[4], trained.item_vectors())
print(json.dumps(trained.history))
"""


CROSS_REPLICA = """
import json
import numpy as np, tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
import tensorflow_recommenders as tfrs
from vistaste.towers.model import global_candidates
rng = np.random.default_rng(0)
users, items = rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 4)).astype("float32")
ids = np.array([0, 1, 2, 1, 3, 4, 5, 2])  # repeated ids across the two halves: accidental hits span replicas
probability = rng.uniform(0.01, 0.2, 8).astype("float32")
projection = tf.Variable(rng.normal(size=(4, 4)).astype("float32"))
task = tfrs.tasks.Retrieval(temperature=0.1, remove_accidental_hits=True)
def loss(u, i, candidate_ids, p):
    with tf.GradientTape() as tape:
        gathered, p, candidate_ids = global_candidates(i @ projection, p, candidate_ids)
        value = task(u @ projection, gathered, candidate_sampling_probability=p, candidate_ids=candidate_ids, compute_metrics=False)
    return value, tape.gradient(value, projection)
one_loss, one_grad = loss(users, items, ids, probability)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
batch = next(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((users, items, ids, probability)).batch(8))))
losses, grads = tf.function(lambda b: strategy.run(loss, args=b))(batch)
local = strategy.experimental_local_results
print(json.dumps({"one": [float(one_loss), one_grad.numpy().tolist()], "replicas": [len(local(losses)),
      float(sum(v.numpy() for v in local(losses))), sum(g.numpy() for g in local(grads)).tolist()]}))
"""


@pytest.mark.e2e  # a fresh Python of its own (~15 s, most of it TensorFlow's start-up): the end-to-end tier
def test_cross_replica_negatives_give_one_machines_loss_and_gradient():
    """Two replicas (two logical CPUs, so a fresh process) on halves of a batch of 8: with the candidates
    gathered across replicas, their summed loss and gradient are one replica's on the whole batch (the
    reference), accidental hits and the logQ correction included."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    done = subprocess.run([sys.executable, "-c", CROSS_REPLICA], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["replicas"][0] == 2
    np.testing.assert_allclose(out["replicas"][1], out["one"][0], rtol=1e-5)
    np.testing.assert_allclose(out["replicas"][2], out["one"][1], rtol=1e-4, atol=1e-4)


def test_worker_shards_are_disjoint_equal_and_cover_all_but_the_remainder():
    shards = [worker_shard(103, 4, i, seed=7) for i in range(4)]
    assert [len(s) for s in shards] == [25] * 4
    joined = np.concatenate(shards)
    assert len(np.unique(joined)) == 100 and joined.min() >= 0 and joined.max() < 103
    np.testing.assert_array_equal(worker_shard(103, 4, 2, seed=7), shards[2])  # every worker draws the same permutation
    with pytest.raises(ValueError, match="index must be in"):
        worker_shard(10, 2, 2, seed=0)
    with pytest.raises(ValueError, match="cannot be shared"):
        worker_shard(1, 2, 0, seed=0)


def _top(trained, val, available):
    scores = trained.user_vectors(val.user_ids, val.history_rows) @ trained.item_vectors().T
    return metrics.top_k(metrics.exclude(scores, val.exclude, available), K)


@pytest.mark.e2e
def test_two_local_workers_match_single_machine_training(tmp_path):
    world = tmp_path / "world"
    generate_world(world, WorldConfig(items=300, users=1000, days=21, seed=4, images=False), progress=False)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}
    # Worker 0 (the chief) runs the documented command; worker 1 the library function it wraps, keeping its towers.
    chief = [sys.executable, "-m", "vistaste.apps.cli", "train", str(world), "--out", str(tmp_path / "model"), "--distributed",
             "--epochs", str(CONFIG["epochs"]), "--batch-size", str(CONFIG["batch_size"]), "--test-days", str(CONFIG["test_days"]),
             "--refit", CONFIG["refit"], "--min-val-users", str(CONFIG["min_val_users"])]
    other = [sys.executable, "-c", WORKER, str(world), str(tmp_path / "model"), json.dumps(CONFIG), str(tmp_path / "vectors1.npy")]
    workers = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**env, "TF_CONFIG": json.dumps(tf_config)})
               for tf_config, command in zip(local_cluster(2), [chief, other])]
    try:
        results = [w.communicate(timeout=900) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, (out, err) in zip(workers, results):
        assert w.returncode == 0, out[-1000:] + err[-3000:]
    assert "2 worker(s), 8 epochs, 128 examples per worker per step" in results[0][0], results[0][0]

    # Synchronous data parallelism: both workers end with the very same towers; only the chief's model is kept.
    distributed = TrainedTwoTower.load(tmp_path / "model")
    np.testing.assert_allclose(distributed.item_vectors(), np.load(tmp_path / "vectors1.npy"), atol=1e-6)
    assert not (tmp_path / ".model.worker-1").exists()
    config = TrainConfig(**CONFIG)
    assert distributed.config == config
    split, _, table, pca = prepare(world, config)
    train_pos = training_examples(split.train, table, config.history_length)[0]
    examples = len(train_pos)
    for h in (distributed.history, json.loads(results[1][0].strip().splitlines()[-1])):
        assert h["workers"] == 2 and h["per_replica_batch"] == 128 and h["epochs"] == CONFIG["epochs"]
        assert h["train_examples"] == 2 * h["worker_examples"] and examples - 1 <= h["train_examples"] <= examples

    # Against one machine with the same global batch, epochs and seed (the negatives are the same, gathered
    # across workers; what differs is which examples meet in a batch). One run's recall@50 moves by ~0.02
    # with the shuffle alone (benchmarks/distributed_training.py: over 8 seeds the two are level, mean
    # difference -0.002). Measured before the gathering, on this world: the top-50 lists shared 89%, where
    # one machine at batch 128 (twice the steps) shares 62% with either and an untrained model 34%.
    # So: top-50 overlap >= 0.75 (the main check), recall@50 within 0.05 of one machine's, and a real gain.
    tf_keras.utils.set_random_seed(config.seed)
    single = fit_on_logs(split.train, table, config, config.epochs, pca=pca)
    untrained = _new_trained(config, train_pos, table, pca, config.epochs)
    val, available = validation_slice(split, table, config), available_items(table, split.test_start)
    scores = {name: validation_scores(t, val, available, K)[f"recall@{K}"]
              for name, t in [("distributed", distributed), ("single", single), ("untrained", untrained)]}
    overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(_top(distributed, val, available), _top(single, val, available))])
    assert overlap >= 0.75, (overlap, scores)
    assert abs(scores["distributed"] - scores["single"]) <= 0.05, scores
    assert scores["distributed"] >= scores["untrained"] + 0.05, scores
