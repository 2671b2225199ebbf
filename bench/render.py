"""The built-in world's pictures: each catalog image drawn from its attributes (palette-coloured pattern,
object silhouette), deterministic per (seed, item), and the contact sheet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from vistaste.bench.world_config import PALETTE_NAMES, PALETTES, PATTERNS, STYLE_PERIOD
from vistaste.data.io import atomic_path, resolve_inside


def render_image(palette: str, pattern: str, style: str, shape: str, layout: str, seed: tuple[int, int], size: int = 224) -> Image.Image:
    """Draw one catalog image: a palette-coloured pattern with an object silhouette on top."""
    rng = np.random.default_rng(list(seed))
    colors = np.array(PALETTES[palette], dtype=np.float32)
    period = STYLE_PERIOD[style] * size / 224 * rng.uniform(0.85, 1.15)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]) + rng.normal(0, 0.08)
    along = xx * np.cos(theta) + yy * np.sin(theta) + rng.uniform(0, period * 2)
    across = -xx * np.sin(theta) + yy * np.cos(theta)
    index = np.zeros((size, size), dtype=np.int64)
    if pattern == "stripes":
        index = 1 + (np.floor(along / period).astype(np.int64) % 2)
    elif pattern == "zigzag":
        tri = np.abs(((across / period) % 2.0) - 1.0) * period * 0.8
        index = 1 + (np.floor((along + tri) / period).astype(np.int64) % 2)
    elif pattern == "checks":
        index = 1 + ((np.floor(along / period) + np.floor(across / period)).astype(np.int64) % 2)
    elif pattern in ("dots", "florals"):
        cell = period * 1.6
        cx, cy = (xx % cell) - cell / 2, (yy % cell) - cell / 2
        r, phi = np.hypot(cx, cy), np.arctan2(cy, cx)
        row_parity = (np.floor(yy / cell).astype(np.int64) % 2)
        if pattern == "dots":
            index = np.where(r < cell * 0.3, 1 + row_parity, 0)
        else:
            petals = r < cell * 0.45 * np.abs(np.cos(2.5 * phi + rng.uniform(0, np.pi)))
            index = np.where(r < cell * 0.12, 2, np.where(petals, 1, 0))
    rgb = colors[index]
    if pattern == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
        t = np.clip(t + 0.06 * np.sin(across / period * np.pi), 0, 1)[..., None]
        rgb = np.where(t < 0.5, colors[0] + (colors[1] - colors[0]) * (t * 2), colors[1] + (colors[2] - colors[1]) * (t * 2 - 1))
    rgb = np.clip(rgb + rng.normal(0, 5, rgb.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")

    radius = size * rng.uniform(0.2, 0.26)
    cx, cy = {"center": (0.5, 0.5), "left": (0.32, 0.55), "right": (0.68, 0.55), "top": (0.5, 0.32)}[layout]
    cx, cy = cx * size + rng.normal(0, size * 0.02), cy * size + rng.normal(0, size * 0.02)
    draw = ImageDraw.Draw(image)
    fill, outline, width = (248, 248, 244), (30, 30, 30), max(2, size // 56)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill, outline=outline, width=width)
    elif shape == "square":
        draw.rectangle([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill, outline=outline, width=width)
    else:
        if shape == "triangle":
            angles, radii = np.array([-90, 30, 150]), np.full(3, radius * 1.2)
        elif shape == "diamond":
            angles, radii = np.array([-90, 0, 90, 180]), np.array([1.25, 0.8, 1.25, 0.8]) * radius
        else:  # star
            angles, radii = np.arange(10) * 36 - 90, np.where(np.arange(10) % 2 == 0, 1.25, 0.5) * radius
        points = [(cx + r * np.cos(np.radians(a)), cy + r * np.sin(np.radians(a))) for a, r in zip(angles, radii)]
        draw.polygon(points, fill=fill, outline=outline, width=width)
    return image


def _render_chunk(args) -> int:
    rows, directory, size, seed = args
    for index, palette, pattern, style, shape, layout, rel in rows:
        path = directory / rel
        image = render_image(palette, pattern, style, shape, layout, (seed, index), size)
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)
    return len(rows)


def contact_sheet(catalog: pd.DataFrame, attributes: pd.DataFrame, directory: Path, thumb: int = 72) -> Image.Image:
    """A grid of sample images: one row per pattern, one column per palette."""
    merged = catalog.merge(attributes, on="item_id")
    label_w, label_h = 70, 16
    sheet = Image.new("RGB", (label_w + thumb * len(PALETTES), label_h + thumb * len(PATTERNS)), "white")
    draw = ImageDraw.Draw(sheet)
    for col, palette in enumerate(PALETTE_NAMES):
        draw.text((label_w + col * thumb + 4, 2), palette, fill="black")
    for row, pattern in enumerate(PATTERNS):
        draw.text((4, label_h + row * thumb + thumb // 2 - 6), pattern, fill="black")
        for col, palette in enumerate(PALETTE_NAMES):
            match = merged[(merged["pattern"] == pattern) & (merged["palette"] == palette)]
            if len(match) and match["image_path"].iloc[0]:
                with Image.open(resolve_inside(directory, match["image_path"].iloc[0])) as img:
                    sheet.paste(img.convert("RGB").resize((thumb, thumb)), (label_w + col * thumb, label_h + row * thumb))
    return sheet


