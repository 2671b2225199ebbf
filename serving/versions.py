"""The export root's layout, readable without TensorFlow: ``ROOT/<version>/`` directories and the
``ROOT/current`` pointer, written last. Serving resolves versions here and never loads training code."""
from __future__ import annotations

from pathlib import Path

from vistaste.data.io import atomic_path

CURRENT = "current"
TREND_CLICKS = "trend_clicks.parquet"


def next_version(root: Path) -> str:
    numbers = [int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.exists() else []
    return str(max(numbers, default=0) + 1)


def set_current(root: Path, version: str) -> None:
    if not (root / version / "saved_model").exists():
        raise FileNotFoundError(f"{root / version}: no saved_model")
    with atomic_path(root / CURRENT) as tmp:
        tmp.write_text(version + "\n")


def current_version_dir(root: str | Path) -> Path:
    """``root/<version named by root/current>``, or ``root`` itself if it is a version directory."""
    root = Path(root)
    if (root / "saved_model").exists():
        return root
    pointer = root / CURRENT
    if not pointer.exists():
        raise FileNotFoundError(f"{root}: no '{CURRENT}' pointer; run `vistaste export` first")
    name = pointer.read_text().strip()
    if not name or not (root / name).resolve().is_relative_to(root.resolve()) or (root / name).resolve() == root.resolve():
        raise ValueError(f"{pointer} names {name!r}, which is not a version directory inside the export root {root}")
    if not (root / name / "saved_model").exists():
        raise FileNotFoundError(f"{pointer} names version {name!r}, but {root / name} is missing or has no saved_model")
    return root / name
