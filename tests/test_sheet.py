"""Slide sheets: required columns, path-safe unique ids, string dtypes."""

from __future__ import annotations

import pytest

from slidesnake.sheet import SheetError, read_sheet


def _write(path, text):
    path.write_text(text)
    return path


def test_reads_ids_as_strings(tmp_path) -> None:
    sheet = read_sheet(_write(tmp_path / "s.tsv", "slide_id\tcase_id\tpath\tlabel\n0001\t007\t/x/0001.svs\tLUAD\n"))
    assert sheet.loc[0, "slide_id"] == "0001" and sheet.loc[0, "case_id"] == "007"


@pytest.mark.parametrize(
    "text, message",
    [
        ("slide_id\tpath\na\t/a.svs\n", "lacks column"),
        ("slide_id\tcase_id\tpath\na/b\tc\t/a.svs\n", "must match"),
        ("slide_id\tcase_id\tpath\na\tc\t/a.svs\na\td\t/b.svs\n", "duplicated slide_id"),
        ("slide_id\tcase_id\tpath\na\t\t/a.svs\n", "empty case_id"),
    ],
)
def test_bad_sheets_name_the_file_and_problem(tmp_path, text, message) -> None:
    path = _write(tmp_path / "bad.tsv", text)
    with pytest.raises(SheetError, match=message) as err:
        read_sheet(path)
    assert "bad.tsv" in str(err.value)


def test_missing_sheet_names_the_config_key(tmp_path) -> None:
    with pytest.raises(SheetError, match="'sheet'"):
        read_sheet(tmp_path / "none.tsv")
