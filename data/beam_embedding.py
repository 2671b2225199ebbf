"""`vistaste embed --runner direct|dataflow|flink|spark`: the embedding pipeline as an Apache Beam pipeline.

The same work as :func:`vistaste.data.embedding.embed_catalog`, split into Beam steps so a runner can
spread it over machines::

    catalog rows -> ResolveAndRead -> Decode -> RunInference(BackboneModelHandler) -> WriteShards(vectors)
                        |  \\-> cached (hash already embedded) -> WriteShards(cached)
                        \\-> dead letters (refused path, unreadable, undecodable) -> WriteShards(dead)
    every shard name -> commit (committed.json)

- Paths are confined to the dataset with the local pipeline's rule and reasons (``refused: ...``), files are
  read and decoded with the same functions, and the model handler builds the same backbone by name on each
  worker (:func:`get_backbone`; the backbone itself is never pickled), so vectors and dead-letter reasons
  are the local pipeline's.
- Skipping: the launcher reads the local pipeline's embedding cache (content hash -> vector, per backbone
  ``cache_key``) and hands its keys to the workers as a side input; images whose hash is in it are not
  decoded or embedded. After the run the launcher adds the new vectors to that cache, so a Beam run and a
  local run share it: either one after the other embeds nothing twice.
- Output: shards of this run's new vectors (``item_id, content_hash, vector``), of cached items and of dead
  letters in ``embeddings.shards/`` (listed in the manifest), then, streamed from the cache in catalog order,
  the files the local pipeline writes: ``embeddings.parquet``, ``embedding_errors.csv`` and
  ``embeddings.manifest.json`` (plus ``runner``, ``cache_key`` and ``shards``), so `vistaste train` reads
  either pipeline's output the same way. Workers write into a fresh run directory and only the shards the
  commit step lists are read, so a retried bundle never duplicates a row; every file is written atomically.
- Runners: the DirectRunner runs here (and in the tests), one thread per core by default. Dataflow, Flink
  and Spark need only their own options (``pipeline_args``, e.g. ``--project``, ``--region``,
  ``--temp_location``, ``--flink_master``); the dataset and output directories must then be paths every
  worker can read and write (a shared mount), and the launcher still reads the catalog and writes the final
  table (streamed: its memory does not grow with the catalog).
- PCA (``--pca-dim``) is the local pipeline's: run ``vistaste embed DIR --pca-dim N`` after a Beam run; it
  finds every vector in the shared cache and only fits and writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from vistaste.data.embedding import EMBED_BATCH, EMBEDDINGS_FILE, ERRORS_FILE, MANIFEST_FILE, EmbedResult, catalog_image_paths
from vistaste.data.embedding_cache import EmbeddingCache
from vistaste.data.io import VectorTableWriter, read_table, write_json, write_table

RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}
SHARDS_DIR = "embeddings.shards"
BEAM_MISSING = "the Beam runners need apache-beam: pip install 'vistaste[beam]'"

# Backbones the launcher built, by run token: a DirectRunner worker in this process reuses one instead of
# building it again. Workers elsewhere find nothing here and build their own.
_LOCAL_BACKBONES: dict[str, object] = {}


class BeamNotInstalled(ImportError):
    """apache-beam is not installed; the message says how to install it."""


@contextlib.contextmanager
def _beam_quiet(verbose: bool = False) -> Iterator[None]:
    """Beam logs its start-up and runner chatter at WARNING and INFO (and one root-logger warning about
    optional GCP clients at import): none of it belongs in normal output. Errors still show."""
    if verbose:
        yield
        return
    beam_logger, previous = logging.getLogger("apache_beam"), logging.getLogger("apache_beam").level
    disabled = logging.root.manager.disable
    beam_logger.setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(disabled)
        beam_logger.setLevel(previous)


def import_beam():
    """``apache_beam``, or :class:`BeamNotInstalled` saying ``pip install 'vistaste[beam]'``."""
    try:
        with _beam_quiet():
            import apache_beam
    except ImportError as exc:
        raise BeamNotInstalled(BEAM_MISSING) from exc
    return apache_beam


def _options(runner: str, pipeline_args: Sequence[str]):
    from apache_beam.options.pipeline_options import PipelineOptions

    if runner not in RUNNERS:
        raise ValueError(f"unknown runner {runner!r}; choose from {sorted(RUNNERS)} (or 'local' for the pipeline without Beam)")
    defaults = [f"--runner={RUNNERS[runner]}"]
    if runner == "direct":  # one thread per core, each embedding whole batches (as embed_catalog's workers do)
        defaults += [f"--direct_num_workers={os.cpu_count() or 1}", "--direct_running_mode=multi_threading"]
    return PipelineOptions([*defaults, *pipeline_args])  # the caller's arguments come last and win


def embed_catalog_beam(
    dataset_dir: str | Path,
    backbone_name: str = "efficientnet-lite0-onnx",
    out_dir: str | Path | None = None,
    runner: str = "direct",
    pipeline_args: Sequence[str] = (),
    batch_size: int = EMBED_BATCH,
    weights: str | Path | None = None,
    cache_dir: str | Path | None = None,
    shard_rows: int = 1024,
    output_chunk: int = 4096,
    verbose: bool = False,
) -> EmbedResult:
    """Embed every catalog image of ``dataset_dir`` with a Beam pipeline on ``runner`` (see module docstring).

    Writes what :func:`embed_catalog` writes (same vectors, same reasons) plus ``embeddings.shards/``;
    returns the same :class:`EmbedResult`. ``pipeline_args`` are Beam's own flags for the runner.
    """
    beam = import_beam()
    from vistaste.data import beam_transforms as bt
    from vistaste.data.backbones import get_backbone

    dataset_dir = Path(dataset_dir)
    out_dir = Path(out_dir) if out_dir is not None else dataset_dir
    options = _options(runner, pipeline_args)
    catalog_path, rows = catalog_image_paths(dataset_dir)
    catalog_ids = [item_id for item_id, _ in rows]
    backbone = get_backbone(backbone_name, weights)  # for the manifest, the cache key and (DirectRunner) the workers
    cache = EmbeddingCache(cache_dir or out_dir / ".embedding_cache", backbone.cache_key)
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = out_dir / f".beam-run-{uuid.uuid4().hex[:12]}"
    run_dir.mkdir()
    token = uuid.uuid4().hex
    _LOCAL_BACKBONES[token] = backbone
    try:
        handler = bt.BackboneModelHandler(backbone_name, None if weights is None else str(weights), batch_size, local_token=token)
        with _beam_quiet(verbose):
            pipeline = beam.Pipeline(options=options)
            known = pipeline | "Known hashes" >> beam.Create([cache.keys()])
            read = (pipeline | "Catalog" >> beam.Create(rows, reshuffle=False)
                    | "Resolve and read" >> beam.ParDo(bt.ResolveAndRead(str(dataset_dir)), beam.pvalue.AsSingleton(known))
                    .with_outputs(bt.DEAD, bt.CACHED, main="new"))
            decoded = read.new | "Decode" >> beam.ParDo(bt.Decode(backbone.image_size)).with_outputs(bt.DEAD, main="pixels")
            from apache_beam.ml.inference.base import RunInference

            vectors = decoded.pixels | "Embed" >> RunInference(handler)
            dead = (read[bt.DEAD], decoded[bt.DEAD]) | "Dead letters" >> beam.Flatten()
            names = [vectors | "Write vectors" >> beam.ParDo(bt.WriteShards(str(run_dir), "vectors", shard_rows)),
                     read[bt.CACHED] | "Write cached" >> beam.ParDo(bt.WriteShards(str(run_dir), bt.CACHED, 1 << 20)),
                     dead | "Write dead letters" >> beam.ParDo(bt.WriteShards(str(run_dir), bt.DEAD, 1 << 20))]
            (names | "Shards" >> beam.Flatten() | "All shards" >> beam.combiners.ToList()
             | "Commit" >> beam.Map(bt.commit, str(run_dir)))
            state = pipeline.run().wait_until_finish()
        if str(state) not in ("DONE", "PipelineState.DONE"):
            raise RuntimeError(f"Beam pipeline on {RUNNERS[runner]} ended {state}; nothing was written to {out_dir}")
        return _finish(out_dir, run_dir, cache, backbone, runner, catalog_path, catalog_ids, started, shard_rows, output_chunk)
    finally:
        _LOCAL_BACKBONES.pop(token, None)
        shutil.rmtree(run_dir, ignore_errors=True)  # moved to embeddings.shards on success


def _finish(out_dir: Path, run_dir: Path, cache: EmbeddingCache, backbone, runner: str, catalog_path: Path, catalog_ids: list[str],
            started: float, shard_rows: int, output_chunk: int) -> EmbedResult:
    """The launcher's part after the run: add the new vectors to the cache, then write the local pipeline's
    files (vectors streamed from the cache in catalog order) and move the shards to ``embeddings.shards``."""
    import pyarrow.parquet as pq

    from vistaste.data.vectors import _read_vector_table

    committed = json.loads((run_dir / "committed.json").read_text())
    keys_by_item: dict[str, str] = {}
    n_new, errors = 0, []
    for name in committed:
        if name.startswith("vectors-"):
            ids, vectors = _read_vector_table(run_dir / name, "item_id")
            keys = pq.read_table(run_dir / name, columns=["content_hash"]).column(0).to_pylist()
            new = {}
            for item_id, key, vector in zip(ids, keys, vectors):
                keys_by_item[item_id] = key
                if key not in cache and key not in new:
                    new[key] = vector
            cache.add(list(new), np.stack(list(new.values())) if new else np.zeros((0, backbone.dim), np.float32))
            n_new += len(new)
        elif name.startswith(("cached-", "dead-")):
            frame = read_table(run_dir / name)
            if name.startswith("cached-"):
                keys_by_item.update(zip(frame["item_id"].astype(str), frame["content_hash"]))
            else:
                errors.append(frame)
    cache.compact(target_rows=shard_rows)

    ids = [i for i in dict.fromkeys(catalog_ids) if i in keys_by_item]  # catalog order, as embed_catalog writes
    position = {item_id: row for row, item_id in reversed(list(enumerate(catalog_ids)))}
    error_frame = pd.concat(errors, ignore_index=True) if errors else pd.DataFrame(columns=["item_id", "image_path", "reason"])
    error_frame["item_id"] = error_frame["item_id"].astype(str)
    error_frame = error_frame[~error_frame["item_id"].isin(set(ids))]
    error_frame = error_frame.iloc[np.argsort(error_frame["item_id"].map(position).to_numpy(), kind="stable")].reset_index(drop=True)

    with VectorTableWriter(out_dir / EMBEDDINGS_FILE, backbone.dim) as writer:
        for start in range(0, len(ids), output_chunk):
            chunk = ids[start:start + output_chunk]
            vectors = cache.get_many([keys_by_item[i] for i in chunk])
            finite = np.isfinite(vectors).all(axis=1)
            if not finite.all():
                raise ValueError(f"backbone produced non-finite vectors for items {[chunk[r] for r in np.flatnonzero(~finite)[:5]]}")
            writer.write(chunk, vectors)
    write_table(error_frame, out_dir / ERRORS_FILE)
    (run_dir / "committed.json").unlink()
    for stray in set(p.name for p in run_dir.glob("*.parquet")) - set(committed):  # from bundles a runner retried
        (run_dir / stray).unlink()
    shards = out_dir / SHARDS_DIR
    old = out_dir / f".{SHARDS_DIR}.old-{uuid.uuid4().hex[:8]}"
    if shards.exists():
        os.replace(shards, old)
    os.replace(run_dir, shards)
    shutil.rmtree(old, ignore_errors=True)

    seconds = time.perf_counter() - started
    manifest = {**backbone.manifest(), "count": len(ids), "failed": len(error_frame), "catalog": str(catalog_path), "dim": backbone.dim,
                "cache_key": backbone.cache_key, "runner": RUNNERS[runner], "embedded_now": n_new,
                "from_cache": len(ids) - min(n_new, len(ids)), "seconds": seconds,
                "shards": {"directory": SHARDS_DIR, "vectors": sorted(n for n in committed if n.startswith("vectors-")),
                           "cached": sorted(n for n in committed if n.startswith("cached-")),
                           "dead_letters": sorted(n for n in committed if n.startswith("dead-"))}}
    write_json(manifest, out_dir / MANIFEST_FILE)
    return EmbedResult(n_new, len(ids) - min(n_new, len(ids)), len(error_frame), seconds, n_new / seconds if seconds else 0.0,
                       out_dir / EMBEDDINGS_FILE, error_frame)
