"""Training throughput of the default two-tower model (examples/s), separate from validation overhead.

    python benchmarks/train_throughput.py --data demo_out/world [--batch 512 4096]

Builds the training examples of the world once, then times `model.fit` over several epochs at each
batch size (the first epoch, with graph tracing, is reported separately), compiled as training compiles,
with the history given item by item ("distinct", the default path: the user tower's per-item layers run
once per distinct item of the batch) and as one [B, N, d] row per slot ("slot-by-slot", for comparison).
Writes benchmarks/results/train_throughput.json, with the load average: the machine is shared, so compare
runs made back to back. Each steady epoch is timed on its own: examples_per_s is the median epoch,
best_epoch_examples_per_s the fastest (the least disturbed by other work on the machine).
Target: >= 50k examples/s at batch 512 on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

import vistaste  # noqa: F401
from vistaste.towers.training import TrainConfig, _dataset, build_model, compile_model, prepare, training_examples


def _slot_by_slot(user: dict) -> dict:
    """The item-by-item user inputs of the training pipeline as one vector and tag row per history slot."""
    mask = tf.cast(user["history_mask"], tf.float32)[..., None]
    items, index = user["history_items"], user["history_index"]
    return {"user_id": user["user_id"], "history_mask": user["history_mask"], "history": tf.gather(items["vector"], index) * mask,
            "history_tags": tf.gather(items["tags"], index) * mask}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("demo_out/world"))
    parser.add_argument("--batch", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10, help="Repeat the example set to make epochs long enough to time.")
    parser.add_argument("--modes", nargs="+", default=["distinct", "slot-by-slot"], choices=["distinct", "slot-by-slot"])
    args = parser.parse_args()
    rows = []
    for batch, mode in [(b, m) for b in args.batch for m in args.modes]:
        config = TrainConfig(batch_size=batch)
        split, _, table, _ = prepare(args.data, config)
        pos, item_rows, history_rows, probability, _ = training_examples(split.train, table, config.history_length)
        rep = lambda a: np.concatenate([a] * args.repeat)  # noqa: E731
        data = _dataset(rep(pos["user_id"].to_numpy()), rep(history_rows), rep(item_rows), rep(probability), table, batch, 0)
        if mode == "slot-by-slot":  # the history as [B, N, d] slots: the user tower embeds every slot, padding included
            data = data.map(lambda f: {"user": _slot_by_slot(f["user"]), "item": f["item"]})
        model = compile_model(build_model(config, sorted(pos["user_id"].unique()), sorted(pos["item_id"].unique())), config)
        n = len(pos) * args.repeat
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        first = time.perf_counter() - start
        seconds = []  # each epoch timed on its own: on a shared machine the best epoch is the code's speed, the median the usual
        for _ in range(args.epochs):
            start = time.perf_counter()
            model.fit(data, epochs=1, verbose=0)
            seconds.append(time.perf_counter() - start)
        rows.append({"batch": batch, "history_items": mode, "examples_per_epoch": n, "first_epoch_examples_per_s": round(n / first),
                     "examples_per_s": round(n / float(np.median(seconds))), "best_epoch_examples_per_s": round(n / min(seconds)),
                     "load_average_1_min": round(os.getloadavg()[0], 2)})
        print(rows[-1], flush=True)
    figures = {"rows": rows, "cpus": os.cpu_count(), "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
               "machine": platform.platform(), "target_examples_per_s": 50_000,
               "data": str(args.data)}
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_throughput.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
