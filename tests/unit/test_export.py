"""CSV exports neutralise spreadsheet formulas (issue 11, case 8) and keep numbers numeric."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest

from ic_core.runs.store import StudyRun
from ic_core.study.export import items_csv, neutralise_cell, safe_csv

HOSTILE = ['=HYPERLINK("http://x","y")', "+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"]


def _run(tmp_path) -> StudyRun:
    n = len(HOSTILE)
    table = pd.DataFrame({
        "row": range(n),
        "item_id": [f"q{i}" for i in range(n)],
        "regime": ["direct"] * n,
        "question": HOSTILE,
        "output": list(reversed(HOSTILE)),
        "expected": HOSTILE,
        "correct": [True, False] * (n // 2),
        "readout_entropy_bits": [-1.5, 2.0, -0.25, 3.0, 0.0, -7.0],
        "tags": [["=cmd", "ok"]] * n,
        "choices": [[]] * n,
        "aliases": [["@x"]] * n,
        "skipped_tokens": [[]] * n,
        "top_tokens": [["a"]] * n,
    })
    manifest = {"regimes": ["direct"], "n_layers": 1, "d_model": 2, "status": "complete", "n_rows_planned": n}
    return StudyRun(tmp_path, manifest, table, np.zeros((n, 2, 2), np.float16), np.zeros((n, 1), np.float32))


class TestNeutraliseCell:
    @pytest.mark.parametrize("text", HOSTILE)
    def test_formula_starts_get_a_quote(self, text):
        assert neutralise_cell(text) == "'" + text

    @pytest.mark.parametrize("value", ["paris", "", "a=b", "'=already", -2.5, -3, 0.0, None, True])
    def test_plain_text_numbers_and_missing_values_pass(self, value):
        assert neutralise_cell(value) is value or neutralise_cell(value) == value


class TestItemsCsv:
    def test_hostile_text_cells_are_prefixed_in_every_text_column(self, tmp_path):
        rows = list(csv.DictReader(io.StringIO(items_csv(_run(tmp_path)))))
        assert [r["question"] for r in rows] == ["'" + h for h in HOSTILE]
        assert [r["expected"] for r in rows] == ["'" + h for h in HOSTILE]
        assert [r["output"] for r in rows] == ["'" + h for h in reversed(HOSTILE)]
        assert {r["tags"] for r in rows} == {"'=cmd|ok"}
        assert {r["aliases"] for r in rows} == {"'@x"}
        assert "top_tokens" not in rows[0]

    def test_no_cell_starts_a_formula(self, tmp_path):
        text = items_csv(_run(tmp_path))
        cells = [c for row in csv.reader(io.StringIO(text)) for c in row]
        text_cells = [c for c in cells if not _is_number(c)]
        assert text_cells and not [c for c in text_cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]

    def test_negative_numbers_stay_numeric(self, tmp_path):
        back = pd.read_csv(io.StringIO(items_csv(_run(tmp_path))))
        assert back["readout_entropy_bits"].dtype == np.float64
        assert back["readout_entropy_bits"].tolist() == [-1.5, 2.0, -0.25, 3.0, 0.0, -7.0]
        assert back["row"].tolist() == list(range(len(HOSTILE)))

    def test_headers_are_neutralised_too(self):
        assert safe_csv(pd.DataFrame({"=evil": ["x"], "ok": [-1]})).splitlines() == ["'=evil,ok", "x,-1"]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
