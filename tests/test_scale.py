"""Scale checks, excluded by default: `make test-slow`."""
import pandas as pd
import pytest

from vistaste.bench.world import WorldConfig, generate_world


@pytest.mark.slow
def test_million_item_world_without_images(tmp_path):
    summary = generate_world(tmp_path, WorldConfig(items=1_000_000, users=500, days=3, seed=0, images=False), progress=False)
    assert summary["items"] == 1_000_000
    vectors = pd.read_parquet(tmp_path / "item_vectors.parquet")
    assert len(vectors) == 1_000_000 and vectors["item_id"].is_unique
    assert summary["clicks"] > 0
