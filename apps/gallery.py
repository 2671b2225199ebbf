"""A self-contained HTML page: the user's recent clicks beside the recommended items.

Written with the standard library's ``html`` escaping (no template engine needed for one page).
Images are decoded with Pillow and re-encoded as PNG thumbnails inlined as data URIs, so the file can be
mailed or opened anywhere; a file Pillow cannot decode is never inlined. Only files inside the dataset
directory are read (:func:`vistaste.data.io.resolve_inside`: no absolute path elsewhere, no ``..``, no
symlink pointing out), and no server path is written into the page. Each card shows the item's title
(the catalog's ``title`` or ``name`` column) under the image; an item without a usable image (no
``image_path``, a path outside the dataset, a missing file, or a file that is not an image) gets a text
card: its title or id, its tags, and why the image is not shown.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from vistaste.data.contract import title_column
from vistaste.data.images import ImageError, decode_rgb, read_image_file
from vistaste.data.io import DatasetPathError, atomic_path, resolve_inside


def _text(value) -> str:
    """A catalog cell as display text; ``""`` when missing (None, NaN)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return ""
    return str(value).strip()


def _thumb(path: str, dataset_dir: str | Path | None, size: int = 160) -> tuple[str, str]:
    """``(PNG data URI, "")`` for the image at ``path`` (relative to ``dataset_dir``), else ``("", why)``
    (``why`` is ``""`` when there is no path at all). Nothing outside ``dataset_dir`` is opened, and the
    reason never names a server path."""
    if not path:
        return "", ""
    if dataset_dir is None:
        return "", "image not shown: no dataset directory given"
    try:
        # Absolute paths are accepted only inside the dataset: exports before issue 16 stored resolved paths.
        image = decode_rgb(read_image_file(resolve_inside(dataset_dir, path, allow_absolute=True)), size)
    except DatasetPathError as exc:
        return "", f"image not shown: path {exc.reason}"
    except ImageError as exc:
        return "", f"image not shown: {exc}"
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), ""


def _card(item_id: str, meta: dict, caption: str, dataset_dir: str | Path | None) -> str:
    """One figure: the image (or a text card) and, under it, the title, the id and ``caption``."""
    title, tags = meta.get("title", ""), meta.get("tags", "").split()
    src, why = _thumb(meta.get("image_path", ""), dataset_dir)
    if src:
        visual = f'<img src="{src}" alt="{html.escape(title or item_id)}">'
    else:
        chips = "".join(f"<span>{html.escape(tag)}</span>" for tag in tags)
        reason = f'<p class="why">{html.escape(why)}</p>' if why else ""
        visual = f'<div class="text-card"><b>{html.escape(title or item_id)}</b><p class="tags">{chips}</p>{reason}</div>'
    # The title goes under an image; a text card already shows it, so under the card only the id.
    heading = (f'<b>{html.escape(title)}</b><br><span class="id">{html.escape(item_id)}</span>' if title and src
               else f"<b>{html.escape(item_id)}</b>")
    return f"<figure>{visual}<figcaption>{heading}<br>{html.escape(caption)}</figcaption></figure>"


def _metadata(catalog: pd.DataFrame, item_ids: list[str]) -> dict[str, dict]:
    """item_id -> {"image_path", "title", "tags"} as display strings ("" when absent) for ``item_ids``."""
    if "item_id" in catalog.columns:
        catalog = catalog.set_index("item_id")
    title = title_column(catalog.columns)
    columns = {"image_path": "image_path", "title": title, "tags": "tags"}
    rows = catalog.reindex(list(dict.fromkeys(item_ids)))
    return {item_id: {key: _text(row[column]) if column in rows.columns else "" for key, column in columns.items()}
            for item_id, row in rows.iterrows()}


def write_gallery(path: str | Path, user_id: str, history: list[str], slate: pd.DataFrame, catalog: pd.DataFrame, note: str = "",
                  dataset_dir: str | Path | None = None) -> Path:
    """Write the gallery page to ``path`` (atomically) and return it.

    ``slate``: item_id, score, reason (as from :class:`~vistaste.serving.recommender.Recommender`).
    ``catalog``: item metadata indexed by item_id (or with an item_id column), any of ``image_path``,
    ``title`` or ``name``, ``tags`` (space-separated); items missing from it get a text card with their id.
    ``dataset_dir``: the directory image paths are relative to; images are read only from inside it, and
    without it none is read (each item with an image path gets a text card saying so).
    """
    history = list(history[-12:])
    meta = _metadata(catalog, history + list(slate["item_id"]))
    clicked = "".join(_card(i, meta[i], "clicked", dataset_dir) for i in history) or "<p>no clicks yet</p>"
    recommended = "".join(_card(r.item_id, meta[r.item_id], f"#{n + 1} · {r.score:.3f} · {r.reason}", dataset_dir)
                          for n, r in enumerate(slate.itertuples()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vistaste · {html.escape(user_id)}</title>
<style>body{{font-family:sans-serif;margin:24px}} section{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;width:170px;font-size:12px}} img{{width:160px;height:160px;object-fit:cover;border-radius:6px}}
.text-card{{width:160px;height:160px;box-sizing:border-box;padding:10px;border:1px solid #ccc;border-radius:6px;
background:#f6f6f6;display:flex;flex-direction:column;justify-content:center;overflow:hidden;font-size:14px}}
.tags span{{display:inline-block;margin:2px;padding:1px 6px;border-radius:8px;background:#e2e2e2;font-size:11px}}
.id{{color:#777}} .why{{color:#a33;font-size:11px}}</style></head><body>
<h1>Recommendations for {html.escape(user_id)}</h1><p>{html.escape(note)}</p>
<h2>Recently clicked</h2><section>{clicked}</section>
<h2>Recommended</h2><section>{recommended}</section></body></html>"""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page)
    return Path(path)
