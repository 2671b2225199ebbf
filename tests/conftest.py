import contextlib
import os
import shutil

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from vistaste.bench.world import WorldConfig, generate_world

# Longest first: with `--dist loadfile` each file goes whole to a pytest-xdist worker, in the order collected, so
# the files that take longest (their fixtures and tests; `pytest --durations=0`, session 17) are sent first and
# no worker is left alone with a long one at the end; test_one_path.py comes second because the first two start
# together and test_serving.py would wait for the export the first builds (``served_world``). A file missing here
# keeps its place after these.
LONGEST_FIRST = ("walkthrough.ipynb", "test_service_hostile.py", "test_one_path.py", "test_serving.py", "test_finetune.py", "test_cli.py",
                 "test_towers.py", "test_index_tuning.py", "test_shards.py", "test_simulate.py", "test_sim_serving_path.py",
                 "test_baselines.py")


def pytest_collection_modifyitems(items):
    """The walkthrough notebook (collected by nbmake) is an end-to-end check, run by ``make test-e2e``; files
    are ordered longest first (``LONGEST_FIRST``)."""
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.e2e)
    rank = {name: n for n, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


SMALL_WORLD = WorldConfig(items=240, users=150, days=14, seed=3, image_size=64)


@contextlib.contextmanager
def _exclusive(path):
    """An exclusive lock on ``path`` between processes (the xdist workers); none where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: each worker builds its own
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def built_once(tmp_path_factory, name: str, build) -> "os.PathLike":
    """A fresh copy of a directory that ``build(directory)`` makes once per test run: the first xdist worker
    to ask builds it (the others wait on a lock), every caller gets its own copy to read or change."""
    shared_root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # workers' temp dirs are popen-gwN/ inside the run's own directory
        shared_root = shared_root.parent
    shared = shared_root / f"built-{name}"
    with _exclusive(f"{shared}.lock"):
        if not (shared / ".complete").exists():
            shutil.rmtree(shared, ignore_errors=True)
            build(shared)
            (shared / ".complete").touch()
    copy = tmp_path_factory.mktemp(name)
    shutil.copytree(shared, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".complete"))
    return copy


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A small world with real (64x64) images, shared by the tests that only read it."""
    return built_once(tmp_path_factory, "world", lambda directory: generate_world(directory, SMALL_WORLD, workers=1, progress=False))


def _served(root):
    from vistaste.serving.export import export
    from vistaste.towers.training import TrainConfig, train

    # The world before the behaviours: test_serving's margins (trade-off, loop closing) were measured on it.
    generate_world(root / "world", WorldConfig.without_behaviours(items=500, users=300, days=14, seed=7, images=False), progress=False)
    train(root / "world", root / "model", TrainConfig(epochs=3, batch_size=256, test_days=3, min_val_users=5), verbose=False)
    export(root / "model", root / "world", root / "models", k=50)


@pytest.fixture(scope="session")
def served_world(tmp_path_factory):
    """One trained and exported model for the test run (test_serving.py, test_service_hostile.py), built once
    and copied into each worker: ``(root, version_dir)`` with ``root / "world"``, ``root / "model"`` and
    ``root / "models"`` (version 1 current). Tests that change the export root copy it first or restore it
    (test_serving's hot reload writes version 2 and rolls back)."""
    root = built_once(tmp_path_factory, "served", _served)
    return root, root / "models" / "1"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server for the session: pgserver's own binaries, data in a temporary directory.
    Skips, saying why, where pgserver or psycopg is not installed or the server cannot start."""
    try:
        import pgserver
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"PostgreSQL tests need pgserver, psycopg and psycopg-pool (pip install -e '.[test]'): {exc}")
    try:
        server = pgserver.get_server(tmp_path_factory.mktemp("postgres"), cleanup_mode="stop")
    except Exception as exc:  # whatever stops the server starting here is the reason to skip, given in full
        pytest.skip(f"PostgreSQL could not start here: {type(exc).__name__}: {exc}")
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """A URL to a fresh, empty database on the session's server, dropped after the test."""
    import uuid

    import psycopg

    name = f"vistaste_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.get_uri(name)
    with psycopg.connect(postgres_server.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
