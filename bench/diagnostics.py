"""Do the embeddings carry taste? Margins against the world's ground truth, and neighbour sheets."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from vistaste.bench.world import GroundTruth
from vistaste.data.io import resolve_inside
from vistaste.data.vectors import unit_rows


def taste_margin(item_ids: np.ndarray, vectors: np.ndarray, truth: GroundTruth, max_items: int = 3000, seed: int = 0) -> dict:
    """Mean cosine similarity of pairs sharing palette+pattern (any shape) versus pairs sharing only
    the shape (different palette and pattern). A positive margin means taste outweighs geometry."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(item_ids), min(max_items, len(item_ids)), replace=False)
    idx = truth.item_index(item_ids[pick])
    unit = unit_rows(vectors[pick])
    sims = unit @ unit.T
    pal, pat, shp = truth.item_palette[idx], truth.item_pattern[idx], truth.item_shape[idx]
    off_diag = ~np.eye(len(idx), dtype=bool)
    same_taste = (pal[:, None] == pal[None]) & (pat[:, None] == pat[None]) & (shp[:, None] != shp[None]) & off_diag
    same_shape_only = (shp[:, None] == shp[None]) & (pal[:, None] != pal[None]) & (pat[:, None] != pat[None]) & off_diag
    taste_sim, shape_sim = float(sims[same_taste].mean()), float(sims[same_shape_only].mean())
    # Nearest neighbour agreement: how often is an item's nearest neighbour of the same palette+pattern?
    np.fill_diagonal(sims, -np.inf)
    nn = sims.argmax(axis=1)
    return {
        "same_palette_pattern_cosine": taste_sim,
        "same_shape_only_cosine": shape_sim,
        "margin": taste_sim - shape_sim,
        "nn_same_palette_pattern": float(((pal[nn] == pal) & (pat[nn] == pat)).mean()),
        "nn_same_shape": float((shp[nn] == shp).mean()),
        "items": int(len(idx)),
    }


def neighbour_sheet(dataset_dir: str | Path, catalog: pd.DataFrame, item_ids: np.ndarray, vectors: np.ndarray, queries: list[str],
                    k: int = 6, thumb: int = 96) -> Image.Image:
    """One row per query: the query image, then its k nearest neighbours by cosine similarity."""
    unit = unit_rows(vectors)
    position = {item: i for i, item in enumerate(item_ids)}
    paths = catalog.set_index("item_id")["image_path"]
    sheet = Image.new("RGB", ((k + 1) * thumb + 12, len(queries) * (thumb + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, query in enumerate(queries):
        sims = unit @ unit[position[query]]
        sims[position[query]] = -np.inf
        shown = [query] + [item_ids[j] for j in np.argsort(-sims)[:k]]
        for col, item in enumerate(shown):
            with Image.open(resolve_inside(dataset_dir, paths[item])) as image:
                x = col * thumb + (12 if col else 0)
                sheet.paste(image.convert("RGB").resize((thumb - 4, thumb - 4)), (x, row * (thumb + 14) + 12))
                label = "query" if col == 0 else f"{sims[position[item]]:.2f}"
                draw.text((x, row * (thumb + 14)), label, fill="black")
    return sheet


def side_by_side(sheets: dict[str, Image.Image], gap: int = 24, title_height: int = 18) -> Image.Image:
    """Sheets (e.g. :func:`neighbour_sheet` of the same queries under several embeddings) left to right,
    each under its title (the dict's key)."""
    if not sheets:
        raise ValueError("sheets must not be empty")
    width = sum(s.width for s in sheets.values()) + gap * (len(sheets) - 1)
    canvas = Image.new("RGB", (width, title_height + max(s.height for s in sheets.values())), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for title, sheet in sheets.items():
        draw.text((x + 2, 2), title, fill="black")
        canvas.paste(sheet, (x, title_height))
        x += sheet.width + gap
    return canvas
