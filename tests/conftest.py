import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from vistaste.bench.world import WorldConfig, generate_world

SMALL_WORLD = WorldConfig(items=240, users=150, days=14, seed=3, image_size=64)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small world with real (64x64) images, shared by the tests that only read it."""
    directory = tmp_path_factory.mktemp("world")
    generate_world(directory, SMALL_WORLD, workers=1, progress=False)
    return directory
