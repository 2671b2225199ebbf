"""Issue 16: files outside the dataset, and the dataset-validation gaps.

Every bad dataset is built here in tmp_path: image paths that leave the dataset (``..``, absolute, a
symlink pointing out, a symlinked folder), a text file inside it, a name too long for the file system;
CSV rows with more fields than the header, a missing column, header-only tables. No world, no model.
"""
import base64
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.apps.gallery import write_gallery
from vistaste.data import embedding
from vistaste.data.embedding import embed_catalog, load_vectors
from vistaste.data.io import DatasetPathError, dataset_relative, read_table, resolve_all_inside, resolve_inside
from vistaste.data.validation import DataValidationError, load_dataset, validate_dataset

LONG_NAME = "a" * 5000 + ".png"  # longer than any file name: stat() raises ENAMETOOLONG


def _png(path, colour=(200, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)
    return path


@pytest.fixture
def shop(tmp_path):
    """``tmp_path/shop`` (the dataset) beside ``tmp_path/outside`` (a secret image it must never reach).

    Returns (dataset dir, outside image, {name: image_path}) for one catalog row per case.
    """
    shop, outside = tmp_path / "shop", tmp_path / "outside"
    _png(shop / "images" / "ok.png")
    secret = _png(outside / "secret.png", (0, 0, 250))
    (shop / "images" / "notes.png").write_text("not an image at all")
    (shop / "images" / "out.png").symlink_to(secret)  # a symlink pointing out of the dataset
    (shop / "images" / "hostname.png").symlink_to("/etc/hostname")
    (shop / "linked").symlink_to(outside, target_is_directory=True)  # a folder symlinked out
    (shop / "images" / "alias.png").symlink_to(shop / "images" / "ok.png")  # inside -> inside: fine
    (shop / "images" / "loop.png").symlink_to(shop / "images" / "loop.png")
    paths = {
        "ok": "images/ok.png",
        "alias": "images/alias.png",
        "dotdot": "../outside/secret.png",
        "passwd": "../../../../../../../../etc/passwd",
        "absolute": "/etc/passwd",
        "absolute_secret": str(secret),
        "symlink_out": "images/out.png",
        "hostname": "images/hostname.png",
        "linked_dir": "linked/secret.png",
        "sneaky": "images/../../outside/secret.png",
    }
    return shop, secret, paths


OUTSIDE = ("dotdot", "passwd", "absolute", "absolute_secret", "symlink_out", "hostname", "linked_dir", "sneaky")


# --- the rule -----------------------------------------------------------------------------------------

def test_resolve_inside_refuses_every_way_out_and_keeps_the_ways_in(shop):
    directory, secret, paths = shop
    assert resolve_inside(directory, paths["ok"]) == (directory / "images" / "ok.png").resolve()
    assert resolve_inside(directory, paths["alias"]) == (directory / "images" / "ok.png").resolve()
    assert resolve_inside(directory, "images/./sub/../ok.png") == (directory / "images" / "ok.png").resolve()
    reasons = {}
    for name in OUTSIDE:
        with pytest.raises(DatasetPathError) as caught:
            resolve_inside(directory, paths[name])
        assert isinstance(caught.value, ValueError)  # a ValueError, for callers that catch those
        reasons[name] = caught.value.reason
    assert reasons["dotdot"] == reasons["passwd"] == reasons["sneaky"] == "leaves the dataset directory ('..')"
    assert reasons["absolute"].startswith("is absolute") and reasons["absolute_secret"].startswith("is absolute")
    assert {reasons[n] for n in ("symlink_out", "hostname", "linked_dir")} == {"resolves outside the dataset directory through a symlink"}
    # Absolute paths, where a caller allows them (older exports stored resolved paths), must lie inside too.
    ok = (directory / "images" / "ok.png").resolve()
    assert resolve_inside(directory, str(directory / "images" / "ok.png"), allow_absolute=True) == ok
    with pytest.raises(DatasetPathError, match="resolves outside the dataset directory$"):
        resolve_inside(directory, str(secret), allow_absolute=True)
    odd = (("", "is empty"), ("  ", "is empty"), ("a\x00b.png", "NUL"), (3, "is not text"), ("images/loop.png", "symlink loop"))
    for bad, reason in odd:
        with pytest.raises(DatasetPathError, match=reason):
            resolve_inside(directory, bad)


def test_a_whole_column_at_once_gives_the_same_answers(shop):
    directory, _, paths = shop
    column = [*paths.values(), "images/loop.png", "images/missing.png", "images/../images/ok.png", "linked/../images/ok.png",
              LONG_NAME, "", None]

    def single(path):
        try:
            return resolve_inside(directory, path)
        except DatasetPathError as exc:
            return str(exc)

    assert [r if isinstance(r, Path) else str(r) for r in resolve_all_inside(directory, column)] == [single(p) for p in column]
    # '..' after a symlinked folder is taken in the folder it points to, as the kernel does: outside.
    assert single("linked/../images/ok.png").endswith("'linked/../images/ok.png' resolves outside the dataset directory through a symlink")


def test_the_dataset_directory_may_itself_be_a_symlink(shop, tmp_path):
    directory, _, paths = shop
    (tmp_path / "via").symlink_to(directory, target_is_directory=True)
    assert resolve_inside(tmp_path / "via", paths["ok"]) == (directory / "images" / "ok.png").resolve()
    with pytest.raises(DatasetPathError):
        resolve_inside(tmp_path / "via", paths["symlink_out"])


def test_dataset_relative_paths_are_what_an_export_may_show(shop):
    directory, secret, paths = shop
    assert dataset_relative(directory, "images/./ok.png") == "images/ok.png"
    assert dataset_relative(directory, str(directory / "images" / "ok.png")) == "images/ok.png"  # absolute, inside
    assert dataset_relative(directory, str((directory / "images" / "ok.png").resolve())) == "images/ok.png"
    assert [dataset_relative(directory, paths[name]) for name in OUTSIDE] == [None] * len(OUTSIDE)
    assert dataset_relative(directory, None) is None and dataset_relative(directory, float("nan")) is None


# --- validate -----------------------------------------------------------------------------------------

def _catalog_with(directory, paths):
    names = list(paths)
    pd.DataFrame({"item_id": names, "image_path": [paths[n] for n in names]}).to_csv(directory / "catalog.csv", index=False)
    pd.DataFrame({"user_id": "u1", "item_id": names, "timestamp": "2024-01-01T00:00:00Z", "event": "click"}).to_csv(
        directory / "interactions.csv", index=False)
    return names


@pytest.mark.parametrize("check_images", [True, False])
def test_validate_reports_paths_outside_the_dataset_by_file_row_column(shop, check_images):
    directory, _, paths = shop
    paths = {**paths, "long": LONG_NAME}
    names = _catalog_with(directory, paths)
    report, _ = validate_dataset(directory, check_images=check_images)
    image_errors = {names[p.row]: p for p in report.errors if p.column == "image_path"}
    # Refused whether or not image files are checked; a name too long exists nowhere (checked only with images).
    assert set(image_errors) == set(OUTSIDE) | ({"long"} if check_images else set())
    assert all(p.file == str(directory / "catalog.csv") for p in image_errors.values())
    assert "leaves the dataset directory" in str(image_errors["passwd"])
    row = names.index("passwd")
    assert str(image_errors["passwd"]).startswith(f"error: {directory / 'catalog.csv'}, row {row} (line {row + 2}), column 'image_path': ")
    assert "is absolute" in image_errors["absolute"].message
    assert "through a symlink" in image_errors["hostname"].message
    # Only those rows go: every other row is kept (the interactions of dropped items go as unknown items).
    tables, _ = load_dataset(directory, on_error="drop", check_images=check_images)
    assert set(tables["catalog"]["item_id"]) == set(names) - set(image_errors)
    with pytest.raises(DataValidationError, match=r"column 'image_path': image path '/etc/passwd' is absolute"):
        load_dataset(directory, check_images=check_images)


def test_cli_validate_names_the_bad_paths_without_a_traceback(shop):
    directory, _, paths = shop
    names = _catalog_with(directory, paths)
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    row = names.index("symlink_out")
    assert f"row {row} (line {row + 2}), column 'image_path': image path 'images/out.png' resolves outside" in result.output
    assert f"{len(OUTSIDE)} error(s)" in result.output


# --- embed --------------------------------------------------------------------------------------------

class _MeanColour:
    """A stand-in backbone: the mean RGB of the image (enough to embed, no weights)."""

    name, image_size, dim, cache_key = "mean-colour", 8, 3, "mean-colour-v1"

    def embed(self, pixels):
        return pixels.reshape(len(pixels), -1, 3).mean(axis=1).astype(np.float32)

    def manifest(self):
        return {"backbone": self.name}


def test_embed_refuses_paths_outside_the_dataset_and_never_opens_them(shop, monkeypatch):
    directory, secret, paths = shop
    paths = {**paths, "notes": "images/notes.png", "long": LONG_NAME}
    _catalog_with(directory, paths)
    opened = []
    real_read = embedding.read_image_file
    monkeypatch.setattr(embedding, "read_image_file", lambda path: opened.append(os.path.realpath(path)) or real_read(path))
    result = embed_catalog(directory, _MeanColour(), out_dir=directory / "out", progress=False, workers=1, io_threads=1)

    root = os.path.realpath(directory)
    assert opened and all(path.startswith(root + os.sep) for path in opened), opened  # nothing outside was opened
    reasons = dict(zip(result.errors["item_id"], result.errors["reason"]))
    assert set(reasons) == set(OUTSIDE) | {"notes", "long"}
    for name in OUTSIDE:
        assert reasons[name].startswith("refused: "), (name, reasons[name])
    assert reasons["passwd"] == "refused: leaves the dataset directory ('..')"
    assert reasons["symlink_out"] == "refused: resolves outside the dataset directory through a symlink"
    assert reasons["notes"] == "not an image (unrecognised format)"
    assert reasons["long"] == "unreadable file: File name too long"
    # The dead-letter file names each refused row with its catalog path; the good rows are embedded.
    errors_file = pd.read_csv(directory / "out" / "embedding_errors.csv")
    assert dict(zip(errors_file["item_id"], errors_file["image_path"]))["absolute"] == "/etc/passwd"
    ids, vectors = load_vectors(directory / "out" / "embeddings.parquet")
    assert sorted(ids) == ["alias", "ok"] and np.allclose(vectors, [[200, 0, 0]] * 2)


# --- the gallery --------------------------------------------------------------------------------------

def test_gallery_reads_nothing_outside_the_dataset_and_says_why(shop):
    directory, secret, paths = shop
    paths = {**paths, "notes": "images/notes.png", "long": LONG_NAME, "folder": "images", "gone": "images/gone.png"}
    catalog = pd.DataFrame({"item_id": list(paths), "image_path": list(paths.values())})
    slate = pd.DataFrame({"item_id": list(paths), "score": np.linspace(1, 0, len(paths)), "reason": "relevance"})
    page = write_gallery(directory / "g.html", "u1", [], slate, catalog, dataset_dir=directory)
    text = page.read_text()

    # Only ok and alias (inside the dataset) are inlined, and both are the red image: the blue secret
    # outside is not, by any route.
    inlined = [chunk.split('"')[0] for chunk in text.split("data:image/png;base64,")[1:]]
    assert len(inlined) == text.count("<img") == 2
    assert [Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB").getpixel((0, 0)) for src in inlined] == [(200, 0, 0)] * 2
    figures = text.split("<figure>")[1:]
    why = {name: figure.split('<p class="why">')[1].split("</p>")[0] for name, figure in zip(paths, figures) if 'class="why"' in figure}
    assert set(why) == set(OUTSIDE) | {"notes", "long", "folder", "gone"}
    assert why["passwd"] == "image not shown: path leaves the dataset directory (&#x27;..&#x27;)"
    assert why["absolute"] == "image not shown: path resolves outside the dataset directory"
    assert why["hostname"] == "image not shown: path resolves outside the dataset directory through a symlink"
    assert why["notes"] == "image not shown: not an image (unrecognised format)"
    assert why["folder"] == "image not shown: unreadable file: Is a directory"
    assert why["gone"] == "image not shown: file not found"
    # No server path appears in the page.
    assert str(directory) not in text and str(secret.parent) not in text


def test_gallery_without_a_dataset_directory_reads_no_image(shop):
    directory, _, paths = shop
    catalog = pd.DataFrame({"item_id": ["ok"], "image_path": [str(directory / paths["ok"])]})
    slate = pd.DataFrame({"item_id": ["ok"], "score": [1.0], "reason": ["relevance"]})
    page = write_gallery(directory / "g.html", "u1", [], slate, catalog)
    assert "<img" not in page.read_text() and "image not shown: no dataset directory given" in page.read_text()


# --- validation gaps ----------------------------------------------------------------------------------

def _dataset(directory, catalog: str, interactions: str):
    directory.mkdir(exist_ok=True)
    (directory / "catalog.csv").write_text(catalog)
    (directory / "interactions.csv").write_text(interactions)
    return directory


CATALOG = "item_id,image_path\na,\nb,\nc,\n"
HEADER = "user_id,item_id,timestamp,event\n"


@pytest.mark.parametrize("long_row", [0, 1, 2])
def test_a_row_with_more_fields_than_the_header_is_reported_by_row(tmp_path, long_row):
    rows = ["u1,a,2024-01-01,click", "u2,b,2024-01-02,click", "u3,c,2024-01-03,save"]
    rows[long_row] += ",extra"  # the first row too: pandas would take the first fields as an index
    directory = _dataset(tmp_path / "d", CATALOG, HEADER + "\n".join(rows) + "\n")
    report, _ = validate_dataset(directory)
    assert [str(p) for p in report.errors] == [
        f"error: {directory / 'interactions.csv'}, row {long_row} (line {long_row + 2}): too many fields: 5, the header has 4"]
    tables, _ = load_dataset(directory, on_error="drop")
    assert list(tables["interactions"]["user_id"]) == [u for n, u in enumerate(["u1", "u2", "u3"]) if n != long_row]
    with pytest.raises(ValueError, match=rf"interactions.csv, row {long_row}: too many fields: 5, the header has 4"):
        read_table(directory / "interactions.csv")  # other readers get a clear error, never a shifted table


def test_a_missing_column_is_named(tmp_path):
    directory = _dataset(tmp_path / "d", CATALOG, "user_id,item_id,event\nu1,a,click\n")
    report, _ = validate_dataset(directory)
    assert [str(p) for p in report.errors] == [f"error: {directory / 'interactions.csv'}, column 'timestamp': required column is missing"]
    with pytest.raises(DataValidationError, match="column 'timestamp': required column is missing"):
        load_dataset(directory, on_error="drop")


def test_header_only_tables_say_they_have_no_rows(tmp_path):
    directory = _dataset(tmp_path / "d", "item_id,image_path\n", "user_id,item_id,event\n")
    report, _ = validate_dataset(directory)
    assert [str(p) for p in report.errors] == [
        f"error: {directory / 'catalog.csv'}: no rows: the table has a header but no data",
        f"error: {directory / 'interactions.csv'}, column 'timestamp': required column is missing",
        f"error: {directory / 'interactions.csv'}: no rows: the table has a header but no data",
    ]
    assert report.row_counts == {"catalog": 0, "interactions": 0}
    result = CliRunner().invoke(app, ["validate", str(directory)])
    assert result.exit_code == 1 and "no rows" in result.output and "dtype" not in result.output and "Traceback" not in result.output
