"""The Beam embedding pipeline (DirectRunner) against the local pipeline: images/s and identical vectors.

    python benchmarks/beam_embed.py [--world DIR] [--items 2000] [--repeats 2]

Embeds the same world's images with ``embed_catalog`` (local) and ``embed_catalog_beam`` on the
DirectRunner, each from a cold cache, same backbone (efficientnet-lite0-onnx) and batch size, interleaved
(local, Beam, local, Beam, ...) so a change in the machine's load hits both alike; then once more with the
DirectRunner on one worker thread, the alternative configuration. Times are end to end, as the CLI sees
them: reading the catalog, the pipeline's start-up, decoding, inference and writing every output file.
Writes benchmarks/results/beam_embed.json: images/s of each run, the ratio of the means, the load average
before and after, and whether the two pipelines' vectors are identical. The world (default: /tmp/ft/world
if present, else a generated 2,000-item world) is only read; outputs go under --work.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np

import vistaste  # noqa: F401  (sets TF_USE_LEGACY_KERAS)
from vistaste.bench.world import WorldConfig, generate_world
from vistaste.data.backbones import get_backbone
from vistaste.data.beam_embedding import embed_catalog_beam
from vistaste.data.embedding import embed_catalog, load_vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, default=None, help="an existing world (read only); default /tmp/ft/world if present")
    parser.add_argument("--items", type=int, default=2000, help="items of the generated world when there is none")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each pipeline")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work"))
    args = parser.parse_args()

    world = args.world or (Path("/tmp/ft/world") if (Path("/tmp/ft/world") / "catalog.parquet").exists() else None)
    if world is None:
        world = args.work / f"world-{args.items}"
        if not (world / "catalog.parquet").exists():
            generate_world(world, WorldConfig(items=args.items, users=50, days=2, seed=1))
    backbone = get_backbone()
    work = args.work / "beam-embed"
    load_before = os.getloadavg()

    def run(kind: str, number: int, pipeline_args: tuple[str, ...] = ()) -> dict:
        out = work / f"{kind}-{number}"
        shutil.rmtree(out, ignore_errors=True)  # cold cache: the cache lives in the output directory
        start = time.perf_counter()
        if kind == "local":
            result = embed_catalog(world, backbone, out_dir=out, batch_size=args.batch, progress=False)
        else:
            result = embed_catalog_beam(world, out_dir=out, pipeline_args=pipeline_args, batch_size=args.batch)
        seconds = time.perf_counter() - start
        row = {"pipeline": kind, "pipeline_args": list(pipeline_args), "images": result.embedded, "seconds": round(seconds, 2),
               "images_per_second": round(result.embedded / seconds, 1), "load_1min_after": round(os.getloadavg()[0], 2), "out": str(out)}
        print(json.dumps(row), flush=True)
        return row

    runs = []
    for number in range(args.repeats):
        runs.append(run("local", number))
        runs.append(run("beam", number))
    runs.append(run("beam", args.repeats, ("--direct_num_workers=1",)))
    local = [r for r in runs if r["pipeline"] == "local"]
    beam = [r for r in runs if r["pipeline"] == "beam" and not r["pipeline_args"]]
    one_thread = runs[-1]

    local_ids, local_vectors = load_vectors(Path(local[0]["out"]) / "embeddings.parquet")
    beam_ids, beam_vectors = load_vectors(Path(beam[0]["out"]) / "embeddings.parquet")
    same_ids = bool(np.array_equal(local_ids, beam_ids))
    local_rate = float(np.mean([r["images_per_second"] for r in local]))
    beam_rate = float(np.mean([r["images_per_second"] for r in beam]))
    figures = {
        "world": str(world),
        "images": local[0]["images"],
        "backbone": backbone.name,
        "batch": args.batch,
        "local_images_per_second": round(local_rate, 1),
        "beam_direct_images_per_second": round(beam_rate, 1),
        "ratio_beam_to_local": round(beam_rate / local_rate, 3),
        "target_ratio": 0.7,
        "beam_direct_options": f"direct_num_workers={os.cpu_count()}, direct_running_mode=multi_threading (the default here)",
        "beam_direct_one_worker_images_per_second": one_thread["images_per_second"],
        "vectors_identical": same_ids and bool(np.array_equal(local_vectors, beam_vectors)),
        "same_items_same_order": same_ids,
        "max_abs_difference": float(np.abs(local_vectors - beam_vectors).max()) if same_ids else None,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "runs": [{k: v for k, v in r.items() if k != "out"} for r in runs],
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
    }
    for key in ("local_images_per_second", "beam_direct_images_per_second", "ratio_beam_to_local",
                "beam_direct_one_worker_images_per_second", "vectors_identical", "max_abs_difference",
                "load_average_before", "load_average_after"):
        print(f"{key:<44}{figures[key]}")
    results = Path("benchmarks/results")
    results.mkdir(parents=True, exist_ok=True)
    (results / "beam_embed.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
