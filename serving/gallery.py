"""A self-contained HTML page: the user's recent clicks beside the recommended images.

Written with the standard library's ``html`` escaping (no template engine needed for one page);
images are inlined as data URIs so the file can be mailed or opened anywhere.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd
from PIL import Image

from vistaste.data.io import atomic_path


def _thumb(path: str | None, size: int = 160) -> str:
    if not path or not Path(path).is_file():
        return ""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _card(item_id: str, path: str | None, caption: str) -> str:
    src = _thumb(path)
    image = f'<img src="{src}" alt="{html.escape(item_id)}">' if src else '<div class="missing">no image</div>'
    return f'<figure>{image}<figcaption><b>{html.escape(item_id)}</b><br>{html.escape(caption)}</figcaption></figure>'


def write_gallery(path: str | Path, user_id: str, history: list[str], slate: pd.DataFrame, image_paths: dict[str, str | None], note: str = "") -> Path:
    """``slate``: item_id, score, reason (as from :class:`~vistaste.serving.recommender.Recommender`)."""
    clicked = "".join(_card(i, image_paths.get(i), "clicked") for i in history[-12:]) or "<p>no clicks yet</p>"
    recommended = "".join(_card(r.item_id, image_paths.get(r.item_id), f"#{n + 1} · {r.score:.3f} · {r.reason}") for n, r in enumerate(slate.itertuples()))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vistaste · {html.escape(user_id)}</title>
<style>body{{font-family:sans-serif;margin:24px}} section{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;width:170px;font-size:12px}} img{{width:160px;height:160px;object-fit:cover;border-radius:6px}}
.missing{{width:160px;height:160px;background:#eee}}</style></head><body>
<h1>Recommendations for {html.escape(user_id)}</h1><p>{html.escape(note)}</p>
<h2>Recently clicked</h2><section>{clicked}</section>
<h2>Recommended</h2><section>{recommended}</section></body></html>"""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(page)
    return Path(path)
