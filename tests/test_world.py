import hashlib

import numpy as np
import pandas as pd
from PIL import Image

from vistaste.bench.world import PATTERNS, START, GroundTruth, WorldConfig, generate_world


def _digest(directory):
    digests = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            digests[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def test_same_seed_gives_identical_files(tmp_path):
    config = WorldConfig(items=40, users=30, days=5, seed=11, image_size=48)
    generate_world(tmp_path / "a", config, workers=1, progress=False)
    generate_world(tmp_path / "b", config, workers=2, progress=False)  # parallel rendering changes nothing
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert len(a) > 40 and a == b
    other = WorldConfig(items=40, users=30, days=5, seed=12, image_size=48)
    generate_world(tmp_path / "c", other, workers=1, progress=False)
    assert _digest(tmp_path / "c")["interactions.parquet"] != a["interactions.parquet"]


def test_images_are_real_pngs(small_world):
    catalog = pd.read_parquet(small_world / "catalog.parquet")
    with Image.open(small_world / catalog["image_path"].iloc[0]) as image:
        assert image.format == "PNG" and image.size == (64, 64) and image.mode == "RGB"
        assert np.asarray(image).std() > 10  # not a blank image
    assert (small_world / "contact_sheet.png").is_file()


def test_world_statistics_and_cold_items():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        config = WorldConfig(items=1500, users=800, days=30, seed=5, images=False)
        summary = generate_world(Path(tmp), config, progress=False)
        logs = pd.read_parquet(Path(tmp) / "interactions.parquet")
        catalog = pd.read_parquet(Path(tmp) / "catalog.parquet")
        truth = GroundTruth.load(Path(tmp) / "ground_truth")
    assert 0.02 < summary["ctr"] < 0.3
    # Cold start: some items are created after launch and are only ever shown after they exist.
    created = catalog.set_index("item_id")["created_at"]
    assert (created > START + pd.Timedelta(days=1)).sum() > 100
    assert (logs["timestamp"] >= logs["item_id"].map(created)).all()
    # The trending pattern's share of clicks rises towards its peak, then falls.
    trend = next(t for t in truth.trends if t["attribute"] == "pattern")
    clicks = logs[logs["event"] == "click"].copy()
    clicks["day"] = (clicks["timestamp"] - START).dt.days
    clicks["pattern"] = truth.item_pattern[truth.item_index(clicks["item_id"])]
    clicks["trend"] = clicks["pattern"] == trend["value"]
    peak = trend["peak_day"]
    share = lambda mask: clicks.loc[mask, "trend"].mean()  # noqa: E731
    early, around, late = share(clicks["day"] < 5), share((clicks["day"] - peak).abs() < 3), share(clicks["day"] >= 26)
    assert around > 1.5 * early and around > 1.5 * late, (early, around, late, PATTERNS[trend["value"]])


def test_taste_not_geometry_drives_click_probability(small_world):
    truth = GroundTruth.load(small_world / "ground_truth")
    users = np.arange(len(truth.user_ids))
    p = truth.click_probability(users, np.arange(len(truth.item_ids)), day=0)
    # For every user, items matching their first taste component's palette+pattern are likelier clicks.
    match = (truth.item_palette[None, :] == truth.taste_palette[:, :1]) & (truth.item_pattern[None, :] == truth.taste_pattern[:, :1])
    has_match = match.any(axis=1)
    mean_match = np.nanmean(np.where(match, p, np.nan)[has_match], axis=1)
    assert (mean_match > p[has_match].mean(axis=1)).all()
