"""The HTML documents the jobs write (report.html, the demo page) come from Jinja2 templates with
autoescaping and carry the station's own stylesheet inlined (the one /static/station.css serves)."""

from __future__ import annotations

from inspector.common import documents
from inspector.jobs.views import html_text

HOSTILE = "<script>alert(1)</script>&<b>"


def row(path: str, status: str, **extra) -> dict:
    base = {"path": path, "status": status, "prediction_name": "crack", "confidence": 0.5, "seconds": 0.1,
            "roi_inside": None, "flagged": False, "error": None, "artifacts": {}}
    return {**base, **extra}


def test_every_value_in_the_report_is_text_and_the_stylesheet_is_the_stations():
    rows = [row(f"/in/{HOSTILE}.png", "done", prediction_name=HOSTILE,
                artifacts={"overlay": f"/out/images/{HOSTILE}'.png"}),
            row(f"/in/{HOSTILE}2.png", "failed", error=f"/in/{HOSTILE}2.png: not a readable image"),
            row(f"/in/{HOSTILE}3.png", "pending")]
    text = html_text(rows, "/out", f"audit of {HOSTILE}", notes=[f"stopped: {HOSTILE}"])
    assert "<script>" not in text and "<b>" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&lt;b&gt;") >= 6  # title, note, row, ...
    assert "src='images/%3Cscript%3Ealert%281%29%3C/script%3E%26%3Cb%3E%27.png'" in text
    assert "INCOMPLETE: 1 of 3 images have no result yet" in text
    assert documents.stylesheet() in text and "table.queue" in documents.stylesheet()
