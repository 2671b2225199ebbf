"""The Beam embedding pipeline on the real DirectRunner (no mocks): the local pipeline's vectors and dead-letter
reasons, skipping by content hash on a second run, and `vistaste embed --runner direct`."""
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.data.backbones import get_backbone
from vistaste.data.beam_embedding import SHARDS_DIR, embed_catalog_beam
from vistaste.data.embedding import embed_catalog, load_vectors, read_manifest

# Skipped, not failed, where Beam is not installed (an optional extra); checked without importing it, which every
# pytest-xdist worker would otherwise pay at collection.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="apache_beam is not installed (pip install -e '.[beam]')")

ONE_WORKER = ["--direct_num_workers=1"]  # the fastest start on busy cores for ~60 images


@pytest.fixture(scope="module", autouse=True)
def beam_temp_inside_the_run(tmp_path_factory):
    """Beam's job server makes a ``beam-temp*`` directory when it starts and removes it at interpreter exit,
    which a pytest-xdist worker's exit skips: left in the system's temp directory, one or more per run. Here
    they go under pytest's own temp directory, which pytest prunes."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(tmp_path_factory.mktemp("beam-tmp"))
    yield
    tempfile.tempdir = previous


@pytest.fixture(scope="module")
def world(small_world, tmp_path_factory):
    """60 items of the small world, one of them garbage bytes, one escaping the dataset, one without a path."""
    directory = tmp_path_factory.mktemp("beam_world")
    shutil.copytree(small_world / "images", directory / "images")
    catalog = pd.read_parquet(small_world / "catalog.parquet").head(60).reset_index(drop=True)
    (directory / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    catalog.loc[3, "image_path"] = "images/broken.png"
    catalog.loc[7, "image_path"] = "../../etc/passwd"
    catalog.loc[11, "image_path"] = None
    catalog.to_parquet(directory / "catalog.parquet", index=False)
    return directory


@pytest.fixture(scope="module")
def both(world, tmp_path_factory):
    """The local pipeline's output and the Beam pipeline's, each from a cold cache."""
    local, beam = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("beam")
    local_result = embed_catalog(world, get_backbone(), out_dir=local, progress=False)
    beam_result = embed_catalog_beam(world, out_dir=beam, pipeline_args=ONE_WORKER)
    return local, local_result, beam, beam_result


def test_beam_vectors_are_the_local_pipelines(both):
    local, local_result, beam, beam_result = both
    local_ids, local_vectors = load_vectors(local / "embeddings.parquet")
    beam_ids, beam_vectors = load_vectors(beam / "embeddings.parquet")
    assert beam_result.embedded == local_result.embedded == 57 and len(beam_ids) == 57
    np.testing.assert_array_equal(beam_ids, local_ids)  # same catalog order, not only the same set
    order_l, order_b = np.argsort(local_ids), np.argsort(beam_ids)
    np.testing.assert_allclose(beam_vectors[order_b], local_vectors[order_l], rtol=1e-6, atol=1e-7)
    manifest = read_manifest(beam)
    local_manifest = read_manifest(local)
    for key in ("backbone", "weights_sha256", "preprocessing", "image_size", "dim", "count", "failed"):
        assert manifest[key] == local_manifest[key], key
    assert manifest["runner"] == "DirectRunner" and manifest["cache_key"] == get_backbone().cache_key
    shards = manifest["shards"]
    assert shards["vectors"] and all((beam / SHARDS_DIR / name).is_file() for name in shards["vectors"] + shards["dead_letters"])
    shard_ids = np.concatenate([load_vectors(beam / SHARDS_DIR / name)[0] for name in shards["vectors"]])
    assert sorted(shard_ids) == sorted(beam_ids)  # each shard is an item_id, vector table in its own right
    assert not list(beam.glob(".beam-run-*")) and not list(beam.glob(".*.tmp-*"))  # nothing half-written left behind


def test_bad_images_are_dead_letters_with_the_local_reasons(both, world):
    local, local_result, beam, beam_result = both
    beam_errors = pd.read_csv(beam / "embedding_errors.csv")
    local_errors = pd.read_csv(local / "embedding_errors.csv")
    pd.testing.assert_frame_equal(beam_errors.sort_values("item_id").reset_index(drop=True),
                                  local_errors.sort_values("item_id").reset_index(drop=True))
    catalog = pd.read_parquet(world / "catalog.parquet")
    reasons = dict(zip(beam_errors["item_id"], beam_errors["reason"]))
    broken, escaping, missing = catalog["item_id"].iloc[[3, 7, 11]]
    assert reasons[escaping] == "refused: leaves the dataset directory ('..')"
    assert reasons[broken].startswith("corrupt or truncated image") and reasons[missing] == "no image_path"
    assert beam_result.failed == 3 and set(beam_result.errors["item_id"]) == {broken, escaping, missing}
    assert not {broken, escaping, missing} & set(load_vectors(beam / "embeddings.parquet")[0])  # no vector for a failure
    dead = pd.concat([pd.read_parquet(beam / SHARDS_DIR / name) for name in read_manifest(beam)["shards"]["dead_letters"]])
    assert set(dead["item_id"]) == {broken, escaping, missing}


def test_a_second_run_embeds_nothing_new_and_gives_the_same_table(both, world):
    _, _, beam, _ = both
    ids, vectors = load_vectors(beam / "embeddings.parquet")
    again = embed_catalog_beam(world, out_dir=beam, pipeline_args=ONE_WORKER)
    assert (again.embedded, again.cached, again.failed) == (0, 57, 3)
    ids2, vectors2 = load_vectors(beam / "embeddings.parquet")
    np.testing.assert_array_equal(ids2, ids)
    np.testing.assert_array_equal(vectors2, vectors)
    manifest = read_manifest(beam)
    assert manifest["shards"]["vectors"] == [] and manifest["embedded_now"] == 0 and manifest["from_cache"] == 57
    # The cache is the local pipeline's: a local run on the Beam output embeds nothing either.
    assert embed_catalog(world, get_backbone(), out_dir=beam, progress=False).embedded == 0


def test_cli_embed_with_the_direct_runner(world, tmp_path):
    result = CliRunner().invoke(app, ["embed", str(world), "--out", str(tmp_path), "--runner", "direct", "--batch", "8",
                                      "--pipeline-arg=--direct_num_workers=1"])
    assert result.exit_code == 1, result.output  # 3 failed images, as with the local pipeline
    assert "3 image(s) failed" in result.output and "refused: leaves the dataset directory" in result.output
    assert "WARNING" not in result.output and "apache_beam" not in result.output  # no runner chatter
    assert json.loads((tmp_path / "embeddings.manifest.json").read_text())["count"] == 57
    bogus = CliRunner().invoke(app, ["embed", str(world), "--out", str(tmp_path), "--runner", "storm"])
    assert bogus.exit_code == 2 and "unknown runner 'storm'" in bogus.output
    stray = CliRunner().invoke(app, ["embed", str(world), "--out", str(tmp_path), "--", "--project=p"])
    assert stray.exit_code == 2 and "need a Beam runner" in stray.output


def test_without_beam_the_cli_says_how_to_install_it(world, tmp_path):
    code = ("import sys; sys.modules['apache_beam'] = None; from typer.testing import CliRunner; from vistaste.apps.cli import app; "
            f"r = CliRunner().invoke(app, ['embed', {str(world)!r}, '--out', {str(tmp_path)!r}, '--runner', 'direct']); "
            "print(r.exit_code); print(r.output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    exit_code, message = out.split("\n", 1)
    assert exit_code == "2" and "pip install 'vistaste[beam]'" in message and len(message.strip().splitlines()) == 1
