"""Embedding throughput and peak memory, end to end (decode + resize + infer).

    python benchmarks/embed_throughput.py --items 2000 [--batch 16] [--workers N]

Generates a world of ITEMS images (reused if present), embeds it with a cold cache, prints a table
and writes benchmarks/results/embed_throughput_<backbone>_<items>.json. Run with --items 100000 to check that memory
stays flat (streamed decode, bounded prefetch, sharded cache). Then re-runs with the warm cache
(nothing to embed) and reports how long that takes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.backbones import get_backbone
from vistaste.data.embedding import embed_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU core")
    parser.add_argument("--backbone", default="efficientnet-lite0-onnx",
                        help="efficientnet-lite0-onnx (default) or efficientnet-lite0 (Keras)")
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work"))
    args = parser.parse_args()

    world = args.work / f"world-{args.items}"
    if not (world / "catalog.parquet").exists():
        generate_world(world, WorldConfig(items=args.items, users=50, days=2, seed=1))
    backbone = get_backbone(args.backbone)
    out = args.work / "embed-out"
    shutil.rmtree(out, ignore_errors=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = embed_catalog(world, backbone, out_dir=out, batch_size=args.batch, workers=args.workers)
    seconds = time.perf_counter() - start
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # The incremental path at this scale: everything is cached, so a re-run only hashes and writes.
    warm = embed_catalog(world, backbone, out_dir=out, batch_size=args.batch, workers=args.workers, progress=False)
    figures = {
        "backbone": args.backbone,
        "images": result.embedded,
        "seconds": round(seconds, 2),
        "images_per_second": round(result.embedded / seconds, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "warm_rerun_seconds": round(warm.seconds, 1),
        "warm_rerun_embedded": warm.embedded,
        "rss_before_embedding_mb": round(rss_before, 1),
        "batch": args.batch,
        "workers": args.workers or os.cpu_count(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "target_images_per_second": 150,
    }
    print(f"{'figure':<26}value")
    for key, value in figures.items():
        print(f"{key:<26}{value}")
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / f"embed_throughput_{args.backbone}_{args.items}.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
