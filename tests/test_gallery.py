"""The HTML gallery and the `recommend` table: titles, and text cards for items without a usable image.

Hand-made catalogs only: no world, no model.
"""
import base64
import re
import sys
import types
from html.parser import HTMLParser

import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.apps.gallery import write_gallery


class _Figures(HTMLParser):
    """Each <figure> as {"img": src or None, "card": text of its text card or None, "caption": text}."""

    def __init__(self):
        super().__init__()
        self.figures, self._where = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append({"img": None, "card": None, "why": None, "caption": ""})
        elif tag == "img":
            self.figures[-1]["img"] = attrs["src"]
        elif tag == "div" and attrs.get("class") == "text-card":
            self.figures[-1]["card"], self._where = "", "card"
        elif tag == "p" and attrs.get("class") == "why":
            self.figures[-1]["why"], self._where = "", "why"
        elif tag == "figcaption":
            self._where = "caption"

    def handle_endtag(self, tag):
        if tag in ("div", "figcaption") or (tag == "p" and self._where == "why"):
            self._where = "card" if tag == "p" else None

    def handle_data(self, data):
        if self._where:
            self.figures[-1][self._where] += data + " "


def _figures(path) -> dict[str, dict]:
    """Figures by item id (the caption token like ``i12``); the slate's figure wins over the history's."""
    parser = _Figures()
    parser.feed(path.read_text())
    return {next(t for t in f["caption"].split() if re.fullmatch(r"i\d+", t)): f for f in parser.figures}


def _slate(item_ids):
    return pd.DataFrame({"item_id": item_ids, "score": [0.9 - 0.1 * n for n in range(len(item_ids))], "reason": "relevance"})


def test_titles_under_images_and_text_cards_for_items_without_one(tmp_path):
    png = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 0, 0)).save(png)
    not_an_image = tmp_path / "notes.png"  # the right suffix, but text: must never be inlined
    not_an_image.write_text("SECRET <script>alert(1)</script>")
    catalog = pd.DataFrame({
        "item_id": ["i1", "i2", "i3", "i4"],
        "image_path": ["red.png", None, "gone.png", str(not_an_image)],  # absolute inside the dataset: as older exports stored them
        "title": ["Red <dress>", "Blue coat", None, "Striped scarf"],
        "tags": ["red dress", "blue coat", "green", None],
    }).set_index("item_id")
    page = write_gallery(tmp_path / "g.html", "u1", ["i2"], _slate(["i1", "i2", "i3", "i4"]), catalog, dataset_dir=tmp_path)
    text = page.read_text()
    figures = _figures(page)

    # A decodable image is inlined (re-encoded as PNG), with its title (escaped) and id under it.
    assert figures["i1"]["img"].startswith("data:image/png;base64,") and figures["i1"]["card"] is None
    assert "Red <dress>" in figures["i1"]["caption"] and "Red &lt;dress&gt;" in text
    # No image_path, a missing file, a file that is not an image: a text card with the title (or the
    # id when there is none), the tags and why the image is not shown; no <img> at all.
    assert [figures[i]["img"] for i in ("i2", "i3", "i4")] == [None, None, None]
    assert figures["i2"]["card"].split() == ["Blue", "coat", "blue", "coat"] and figures["i2"]["why"] is None
    assert figures["i3"]["card"].split() == ["i3", "green"] and figures["i3"]["why"].strip() == "image not shown: file not found"
    assert figures["i4"]["card"].split() == ["Striped", "scarf"]
    assert figures["i4"]["why"].strip() == "image not shown: not an image (unrecognised format)"
    assert str(tmp_path) not in text  # no server path in the page
    assert "SECRET" not in text and "<script>" not in text
    assert base64.b64encode(not_an_image.read_bytes()).decode()[:16] not in text
    assert text.count("<img") == 1
    # The clicked item (history) is rendered the same way, before the slate.
    assert text.index("Recently clicked") < text.index('<div class="text-card"><b>Blue coat')


def test_name_column_and_items_missing_from_the_catalog(tmp_path):
    catalog = pd.DataFrame({"item_id": ["i1"], "name": ["Toy Story (1995)"]})  # item_id as a column, `name` as the title
    page = write_gallery(tmp_path / "g.html", "u1", [], _slate(["i1", "i9"]), catalog)
    figures = _figures(page)
    assert figures["i1"]["card"].split() == ["Toy", "Story", "(1995)"]
    assert figures["i9"]["card"].split() == ["i9"]
    assert "no clicks yet" in page.read_text()


class _FakeRecommender:
    """What `vistaste recommend` uses of a Recommender, over a hand-made catalog (no SavedModel)."""

    def __init__(self, models):
        self.catalog = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["Red [dress]", None, "Striped scarf"]}).set_index("item_id")
        self.card = {"data": {}}  # no dataset directory known: the gallery shows no images

    def recommend(self, user_id, k, history=None, method="dpp", trade_off=None):
        return types.SimpleNamespace(items=_slate(["i3", "i1", "i2"][:k]), version="7", history_length=2, fallback=None)

    def stored_history(self, user_id):
        return ["i1"]


def test_recommend_shows_the_catalog_title(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vistaste.serving.recommender", types.SimpleNamespace(Recommender=_FakeRecommender))
    result = CliRunner().invoke(app, ["recommend", "--user", "u1", "-k", "3", "--models", str(tmp_path),
                                      "--html", str(tmp_path / "g.html")])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "item" in line and "score" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["#", "item", "title", "score", "why"]
    rows = [[c.strip() for c in line.strip("│ ").split("│")] for line in result.output.splitlines() if line.startswith("│")]
    assert [row[:3] for row in rows] == [["1", "i3", "Striped scarf"], ["2", "i1", "Red [dress]"], ["3", "i2", ""]]
    assert _figures(tmp_path / "g.html")["i3"]["card"].split() == ["Striped", "scarf"]


def test_recommend_without_titles_keeps_its_columns(monkeypatch, tmp_path):
    class Untitled(_FakeRecommender):
        def __init__(self, models):
            super().__init__(models)
            self.catalog = self.catalog.drop(columns="title")

    monkeypatch.setitem(sys.modules, "vistaste.serving.recommender", types.SimpleNamespace(Recommender=Untitled))
    result = CliRunner().invoke(app, ["recommend", "--user", "u1", "-k", "2", "--models", str(tmp_path)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "item" in line and "score" in line)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["#", "item", "score", "why"]


def test_recommender_image_file_resolves_inside_the_dataset_only(tmp_path):
    from vistaste.serving.recommender import Recommender

    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG")
    recommender = Recommender.__new__(Recommender)  # only the catalog and the card matter here
    recommender.card = {"data": {"dataset_dir": str(tmp_path / "data")}}
    recommender.image_paths = {"a": "images/a.png", "out": "../secret.png", "abs": str(tmp_path / "secret.png"), "none": None}
    assert recommender.image_file("a") == (tmp_path / "data" / "images" / "a.png").resolve()
    assert [recommender.image_file(i) for i in ("out", "abs", "none", "unknown")] == [None] * 4
    recommender.card = {"data": {}}  # an export that does not say where its dataset is: no images
    assert recommender.image_file("a") is None
