"""The Beam pieces of :mod:`vistaste.data.beam_embedding`: the DoFns and the RunInference model handler.

This module imports apache_beam at the top, so only :mod:`vistaste.data.beam_embedding` imports it, and only
inside the function that builds a pipeline: ``import vistaste.data`` never needs Beam. Keeping the classes
at module level (not defined inside a function) lets every runner pickle them by reference.

Each step reuses the local pipeline's functions, so reasons and vectors are the same as ``embed_catalog``'s:
:func:`vistaste.data.io.resolve_all_inside`'s rule confines paths, :func:`read_image_file` and
:func:`decode_image` read and decode, :func:`content_hash` keys the cache, ``Backbone.embed`` embeds.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from vistaste.data.images import ImageError, content_hash, decode_image, read_image_file
from vistaste.data.io import DatasetPathError, _resolve_checked, _vector_column, atomic_path, write_table

DEAD = "dead"  # the dead-letter output: (item_id, image_path, reason), the reasons of embedding_errors.csv
CACHED = "cached"  # items whose content hash is already embedded: (item_id, content_hash)


class ResolveAndRead(beam.DoFn):
    """``(item_id, image_path)`` -> ``(item_id, path, content_hash, bytes)`` for images not yet embedded.

    Paths that leave the dataset are refused without being opened (dead letter ``refused: REASON``, the
    local pipeline's text); unreadable files are dead letters with :func:`read_image_file`'s reason; images
    whose hash is in ``known`` (a side input: the cache's keys when the run started) go to ``cached``.
    """

    def __init__(self, dataset_dir: str):
        self.dataset_dir = dataset_dir

    def setup(self):
        self._root = os.path.realpath(self.dataset_dir)

    def start_bundle(self):
        self._folders: dict[str, str] = {}  # resolve_all_inside's per-call folder cache, per bundle here

    def process(self, row, known):
        item_id, rel = row
        if rel is None:
            yield beam.pvalue.TaggedOutput(DEAD, (item_id, "", "no image_path"))
            return
        try:
            path = _resolve_checked(self._root, rel, False, self._folders)
        except DatasetPathError as exc:
            yield beam.pvalue.TaggedOutput(DEAD, (item_id, rel, f"refused: {exc.reason}"))
            return
        try:
            data = read_image_file(path)
        except ImageError as exc:
            yield beam.pvalue.TaggedOutput(DEAD, (item_id, str(path), str(exc)))
            return
        key = content_hash(data)
        if key in known:
            yield beam.pvalue.TaggedOutput(CACHED, (item_id, key))
        else:
            yield item_id, str(path), key, data


class Decode(beam.DoFn):
    """``(item_id, path, key, bytes)`` -> ``(item_id, key, uint8 pixels)`` with the local pipeline's
    :func:`decode_image` (same resize, so the same vectors); undecodable images are dead letters."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def process(self, element):
        item_id, path, key, data = element
        try:
            yield item_id, key, decode_image(data, self.image_size)
        except ImageError as exc:
            yield beam.pvalue.TaggedOutput(DEAD, (item_id, path, str(exc)))


class BackboneModelHandler(ModelHandler):
    """RunInference around a :class:`vistaste.data.backbones.Backbone`, built by name on each worker.

    Only the name, the weights path and the batch size are pickled; :meth:`load_model` builds the backbone
    with :func:`get_backbone` (RunInference shares one per worker process across its threads: the default
    onnxruntime backbone runs one thread per call, so two threads use two cores, as ``embed_catalog`` does).
    When the pipeline runs in the launching process (DirectRunner), the backbone the launcher already built
    is reused through ``local_token`` instead of being built a second time (~4 s).
    Examples are ``(item_id, content_hash, pixels)``; predictions ``(item_id, content_hash, vector)``.
    """

    def __init__(self, backbone_name: str, weights: str | None, batch_size: int, local_token: str | None = None):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.backbone_name, self.weights, self.batch_size, self.local_token = backbone_name, weights, batch_size, local_token

    def load_model(self):
        from vistaste.data import beam_embedding
        from vistaste.data.backbones import get_backbone

        local = beam_embedding._LOCAL_BACKBONES.get(self.local_token)
        return local if local is not None else get_backbone(self.backbone_name, self.weights)

    def run_inference(self, batch, model, inference_args=None):
        vectors = model.embed(np.stack([pixels for _, _, pixels in batch]))
        return [(item_id, key, vector) for (item_id, key, _), vector in zip(batch, vectors)]

    def get_num_bytes(self, batch) -> int:  # the default pickles the whole batch only to measure it
        return sum(pixels.nbytes for _, _, pixels in batch)

    def batch_elements_kwargs(self):
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def get_metrics_namespace(self) -> str:
        return "vistaste_embed"


class WriteShards(beam.DoFn):
    """Buffers rows and writes them as atomic Parquet shards of at most ``max_rows`` rows into
    ``directory``, named ``KIND-<uuid>.parquet``; emits each shard's file name. Only the names that reach
    the commit step are part of the output, so a bundle a runner retried leaves an unlisted file, never a
    duplicate row.

    Kinds: ``vectors`` (item_id, content_hash, vector as a fixed-size list: :func:`load_vectors` reads a
    shard as it is), ``cached`` (item_id, content_hash) and ``dead`` (item_id, image_path, reason).
    """

    def __init__(self, directory: str, kind: str, max_rows: int = 1024):
        self.directory, self.kind, self.max_rows = directory, kind, max_rows

    def start_bundle(self):
        self._rows: list = []

    def process(self, row):
        self._rows.append(row)
        if len(self._rows) >= self.max_rows:
            yield self._flush()

    def finish_bundle(self):
        if self._rows:
            yield WindowedValue(self._flush(), GlobalWindow().max_timestamp(), (GlobalWindow(),))

    def _flush(self) -> str:
        import pandas as pd

        name = f"{self.kind}-{uuid.uuid4().hex}.parquet"
        path = Path(self.directory) / name
        rows, self._rows = self._rows, []
        if self.kind == "vectors":
            import pyarrow as pa
            import pyarrow.parquet as pq

            vectors = np.stack([vector for _, _, vector in rows])
            table = pa.Table.from_arrays([pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.string()),
                                          _vector_column(vectors)], names=["item_id", "content_hash", "vector"])
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp)
        else:
            columns = ["item_id", "content_hash"] if self.kind == CACHED else ["item_id", "image_path", "reason"]
            write_table(pd.DataFrame(rows, columns=columns), path)
        return name


def commit(names: list[str], directory: str) -> None:
    """The pipeline's last step: the shard names it produced, as ``committed.json`` in the run directory."""
    from vistaste.data.io import write_json

    write_json(sorted(names), Path(directory) / "committed.json")
