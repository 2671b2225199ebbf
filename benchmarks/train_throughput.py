"""Training throughput of the default two-tower model (examples/s), separate from validation overhead.

    python benchmarks/train_throughput.py --data demo_out/world [--batch 512 4096]

Builds the training examples of the world once, then times `model.fit` over several epochs at each
batch size (the first epoch, with graph tracing, is reported separately), with the user tower embedding
each distinct history item once per batch ("distinct", the default path) and slot by slot (the previous
path, for comparison). Writes benchmarks/results/train_throughput.json. Target: >= 50k examples/s at
batch 512 on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import tf_keras

import vistaste  # noqa: F401
from vistaste.towers.training import TrainConfig, _dataset, build_model, prepare, training_examples


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
        import numpy as np

        rep = lambda a: np.concatenate([a] * args.repeat)  # noqa: E731
        data = _dataset(rep(pos["user_id"].to_numpy()), rep(history_rows), rep(item_rows), rep(probability), table, batch, 0)
        if mode == "slot-by-slot":  # without the rows the user tower embeds every history slot
            data = data.map(lambda f: {"user": {k: v for k, v in f["user"].items() if k != "history_rows"}, "item": f["item"]})
        model = build_model(config, sorted(pos["user_id"].unique()), sorted(pos["item_id"].unique()))
        model.compile(optimizer=tf_keras.optimizers.Adam(config.learning_rate))
        n = len(pos) * args.repeat
        start = time.perf_counter()
        model.fit(data, epochs=1, verbose=0)
        first = time.perf_counter() - start
        start = time.perf_counter()
        model.fit(data, epochs=args.epochs, verbose=0)
        steady = time.perf_counter() - start
        rows.append({"batch": batch, "history_items": mode, "examples_per_epoch": n, "first_epoch_examples_per_s": round(n / first),
                     "examples_per_s": round(n * args.epochs / steady)})
        print(rows[-1], flush=True)
    figures = {"rows": rows, "cpus": os.cpu_count(), "machine": platform.platform(), "target_examples_per_s": 50_000,
               "data": str(args.data)}
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "train_throughput.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
