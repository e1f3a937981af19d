"""CSV cells a spreadsheet would run as formulas are written as text (OWASP's CSV injection advice), in
every CSV the project writes for people: results.csv (paths and errors come from file names), the
station's labels.csv (reviewers' comments; also in tests/test_station_api.py) and the evaluation tables."""

from __future__ import annotations

import csv
import io

from inspector.common.spreadsheet import safe_cell
from inspector.jobs.views import CSV_FIELDS, csv_text


def test_each_formula_start_gets_an_apostrophe_and_numbers_stay():
    for text in ("=1+1", "+SUM(A1:A2)", "-2+3", "@SUM(1)", "\tx", "\r=1", "=cmd|' /C calc'!A0"):
        assert safe_cell(text) == "'" + text
    for kept in ("-0.5", "+3", "1e-5", "plain", "", "a=b", "'=already"):
        assert safe_cell(kept) == kept
    assert safe_cell(-0.5) == -0.5 and safe_cell(None) is None and safe_cell(True) is True
    assert safe_cell("-inf") == "'-inf" and safe_cell("-nan") == "'-nan"  # text, not numbers


def test_results_csv_neutralises_paths_and_errors():
    row = dict.fromkeys(("image_sha256", "prediction_name", "confidence", "target_name", "region_count",
                         "evidence_peak", "evidence_mean", "roi_inside", "flagged", "masks", "seconds",
                         "retryable", "result_id"))
    row.update(path="=HYPERLINK(\"http://x\")", status="failed", error="@SUM(1): not a readable image",
               shard="0/1")
    parsed = list(csv.reader(io.StringIO(csv_text([row]), newline="")))
    assert parsed[0] == list(CSV_FIELDS)
    cells = dict(zip(parsed[0], parsed[1]))
    assert cells["path"] == "'=HYPERLINK(\"http://x\")" and cells["error"] == "'@SUM(1): not a readable image"
    assert cells["status"] == "failed" and cells["shard"] == "0/1"
