"""Two fine-tuned embeddings side by side: each item's tags-weighted and co-click vectors (from one
`benchmarks/finetune.py` run per seed), each L2-normalised, concatenated, and measured as that script
measures an arm (nearest-neighbour agreement, content-kNN recall@50, the two-tower as served).

    .venv/bin/python benchmarks/finetune_concat.py --world DIR --work DIR [--seeds 0 1 2] [--epochs 1] [--image-size 224]

A question for reading, not a product path: serving it would need both backbones to embed every new
image. Run `benchmarks/finetune.py --arms tags-weighted,coclicks --two-tower` first (same --world, --work,
seeds, epochs, resolution). Writes ``benchmarks/results/finetune_<resolution>_concat.json``.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import content_knn_recall, neighbour_agreement, two_tower_metrics  # noqa: E402

import vistaste  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from vistaste.bench.world import GroundTruth  # noqa: E402
from vistaste.data.io import write_json, write_vectors  # noqa: E402
from vistaste.data.vectors import load_vectors, unit_rows  # noqa: E402

ARMS = ("tags-weighted", "coclicks")
SHOWN = ("nn_same_palette_pattern", "nn_same_shape", *(f"two-tower {s} recall@50" for s in ("warm users", "new users", "cold items")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/finetune_<image-size>_concat.json")
    args = parser.parse_args()
    args.out = args.out or Path(f"benchmarks/results/finetune_{args.image_size}_concat.json")
    truth = GroundTruth.load(args.world / "ground_truth")
    rows = []
    for seed in args.seeds:
        run = args.work / f"seed{seed}-epochs{args.epochs}-{args.image_size}px"
        missing = [arm for arm in ARMS if not (run / arm / "embeddings" / "embeddings.parquet").exists()]
        if missing:
            raise SystemExit(f"{run}: no embeddings for {', '.join(missing)}; run benchmarks/finetune.py --world {args.world} "
                             f"--work {args.work} --seeds {seed} --epochs {args.epochs} --image-size {args.image_size} "
                             f"--arms {','.join(ARMS)} --two-tower first")
        (ids, first), (other_ids, second) = (load_vectors(run / arm / "embeddings" / "embeddings.parquet") for arm in ARMS)
        if not np.array_equal(ids, other_ids):
            raise SystemExit(f"{run}: the two arms' embeddings list different items")
        out = run / "+".join(ARMS)
        vectors = np.hstack([unit_rows(first), unit_rows(second)])
        write_vectors(out / "embeddings" / "embeddings.parquet", ids, vectors)
        record = {"seed": seed, **neighbour_agreement(ids, vectors, truth, np.ones(len(ids), bool)),
                  **content_knn_recall(args.world, out / "embeddings" / "embeddings.parquet"),
                  **two_tower_metrics(args.world, out / "embeddings" / "embeddings.parquet", out / "two_tower", seed)}
        rows.append(record)
        print(f"seed {seed}: " + ", ".join(f"{k} {record[k]:.3f}" for k in SHOWN), flush=True)
    mean = pd.DataFrame(rows)[list(SHOWN)].agg(["mean", "std"])
    print(mean.round(3).to_markdown())
    write_json({"world": str(args.world), "arms": list(ARMS), "epochs": args.epochs, "image_size": args.image_size, "seeds": args.seeds,
                "runs": rows, "machine": platform.platform(),
                "mean": mean.loc["mean"].to_dict(), "std": mean.loc["std"].to_dict(), "note": __doc__.split("\n\n")[2].replace("\n", " ")},
               args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
