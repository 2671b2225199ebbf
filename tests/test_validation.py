import shutil

import pandas as pd
import pytest
from typer.testing import CliRunner

from vistaste.apps.cli import app
from vistaste.data.validation import DataValidationError, load_dataset, validate_dataset


@pytest.fixture
def broken(small_world, tmp_path):
    """A copy of the small world as CSV with one known defect per row of interest."""
    shutil.copytree(small_world / "images", tmp_path / "images")
    catalog = pd.read_parquet(small_world / "catalog.parquet")
    logs = pd.read_parquet(small_world / "interactions.parquet").head(300).reset_index(drop=True)
    catalog.loc[3, "item_id"] = catalog.loc[2, "item_id"]  # duplicate id (rows 2 and 3)
    catalog.loc[5, "image_path"] = "images/missing.png"  # missing image
    catalog.loc[7, "item_id"] = None  # null id
    logs = logs[logs["item_id"].isin(catalog["item_id"].iloc[8:])].reset_index(drop=True)
    logs["timestamp"] = logs["timestamp"].astype(str)
    logs.loc[4, "timestamp"] = "yesterday"  # unparseable
    logs.loc[6, "event"] = "like"  # not an allowed event
    logs.loc[8, "item_id"] = "no-such-item"  # unknown item
    logs.loc[9, "user_id"] = None  # null user
    logs.loc[10, "position"] = float("nan")  # position is optional: NaN is allowed
    logs.loc[11, "position"] = -1  # negative position
    logs.loc[12, "timestamp"] = "2020-01-01T00:00:00Z"  # out of order: a warning
    catalog.to_csv(tmp_path / "catalog.csv", index=False)
    logs.to_csv(tmp_path / "interactions.csv", index=False)
    return tmp_path, len(catalog), len(logs)


EXPECTED = {
    ("catalog.csv", 2, "item_id"), ("catalog.csv", 3, "item_id"), ("catalog.csv", 5, "image_path"), ("catalog.csv", 7, "item_id"),
    ("interactions.csv", 4, "timestamp"), ("interactions.csv", 6, "event"), ("interactions.csv", 8, "item_id"),
    ("interactions.csv", 9, "user_id"), ("interactions.csv", 11, "position"),
}


def test_every_problem_is_reported_with_file_row_column(broken):
    directory, _, _ = broken
    report, _ = validate_dataset(directory)
    found = {(p.file.rsplit("/", 1)[-1], p.row, p.column) for p in report.errors}
    assert found == EXPECTED
    warnings = [p for p in report.problems if p.severity == "warning"]
    assert [(w.row, w.column) for w in warnings] == [(12, "timestamp")]
    assert not report.ok


def test_clean_world_validates(small_world):
    report, tables = validate_dataset(small_world)
    assert report.ok, str(report)
    assert report.row_counts["interactions"] == len(pd.read_parquet(small_world / "interactions.parquet"))


def test_loader_raises_with_locations_or_drops_only_bad_rows(broken):
    directory, n_catalog, n_logs = broken
    with pytest.raises(DataValidationError, match=r"interactions.csv, row 6 \(line 8\), column 'event'"):
        load_dataset(directory)
    tables, report = load_dataset(directory, on_error="drop")
    assert len(tables["catalog"]) == n_catalog - 4
    assert len(tables["interactions"]) == n_logs - 5  # rows 4, 6, 8, 9, 11; the NaN position row is kept
    assert tables["interactions"]["timestamp"].is_monotonic_increasing


def test_missing_tables_are_errors(tmp_path):
    report, _ = validate_dataset(tmp_path)
    missing = {"missing catalog table (.parquet or .csv)", "missing interactions table (.parquet or .csv)"}
    assert {p.message for p in report.errors} == missing


def test_cli_validate_exit_codes(broken, small_world):
    runner = CliRunner()
    bad = runner.invoke(app, ["validate", str(broken[0])])
    assert bad.exit_code == 1
    assert "row 8" in bad.output and "unknown item id 'no-such-item'" in bad.output
    good = runner.invoke(app, ["validate", str(small_world)])
    assert good.exit_code == 0, good.output
    assert "0 error(s)" in good.output


def test_cli_world_writes_outputs(tmp_path):
    result = CliRunner().invoke(app, ["world", "--out", str(tmp_path / "w"), "--items", "30", "--users", "20", "--days", "3",
                                      "--image-size", "32", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "ctr" in result.output and (tmp_path / "w" / "contact_sheet.png").is_file()
    assert len(list((tmp_path / "w" / "images").glob("*.png"))) == 30
