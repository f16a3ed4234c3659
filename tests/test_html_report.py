"""The LLM section of Locust's HTML report: a real headless run's --html file, and the charts' drawing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from .conftest import replay

# Report columns (their titles) and the --summary-json figure each one must show.
TIMINGS = {
    "TTFT p50 (ms)": ("ttft_ms", "p50"),
    "TTFT p95 (ms)": ("ttft_ms", "p95"),
    "TTFT p99 (ms)": ("ttft_ms", "p99"),
    "ITL p50 (ms)": ("itl_ms", "p50"),
    "ITL p95 (ms)": ("itl_ms", "p95"),
    "E2E p50 (ms)": ("latency_ms", "p50"),
    "E2E p95 (ms)": ("latency_ms", "p95"),
    "TPOT p50 (ms)": ("tpot_ms", "p50"),
}


class _SectionParser(HTMLParser):
    """Rows of the ``#bagstress-llm`` table, as {row name: {column title: cell text}}, and its charts."""

    def __init__(self) -> None:
        super().__init__()
        self.in_section = False
        self.headers: list[str] = []
        self.rows: dict[str, dict[str, str]] = {}
        self.charts: dict[str, list[str]] = {}  # data-chart -> the data-series of its polylines
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._row_name = ""
        self._chart = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "section" and attributes.get("id") == "bagstress-llm":
            self.in_section = True
        if not self.in_section:
            return
        if tag in ("th", "td"):
            self._cell = []
        elif tag == "tr" and "data-name" in attributes:
            self._row, self._row_name = [], attributes["data-name"] or ""
        elif tag == "svg":
            self._chart = attributes.get("data-chart") or ""
            self.charts[self._chart] = []
        elif tag == "polyline":
            self.charts[self._chart].append(attributes.get("data-series") or "")

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if not self.in_section:
            return
        if tag == "th" and self._cell is not None:
            self.headers.append("".join(self._cell))
            self._cell = None
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows[self._row_name] = dict(zip(self.headers, self._row, strict=True))
            self._row = None
        elif tag == "section":
            self.in_section = False


def llm_section(page: str) -> _SectionParser:
    """The LLM section of a report page; fails if the page has none, or more than one."""
    assert page.count('<section id="bagstress-llm">') == 1, "the report has no LLM section, or two"
    parser = _SectionParser()
    parser.feed(page)
    return parser


def number(cell: str) -> float | None:
    return None if cell in ("-", "") else float(cell)


def assert_rows_match_summary(rows: dict[str, dict[str, str]], report: dict[str, Any]) -> None:
    """A table (the report's or the UI's, cells as text) shows the run's --summary-json figures."""
    aggregated = rows["Aggregated"]
    assert number(aggregated["Messages"]) == report["messages"]["total"] > 0
    assert number(aggregated["Failures"]) == report["messages"]["failed"]
    assert number(aggregated["Input tokens"]) == report["tokens"]["input"]
    assert number(aggregated["Output tokens"]) == report["tokens"]["output"]
    assert number(aggregated["Output tokens/s"]) == pytest.approx(report["tokens"]["output_per_s"], abs=0.01)
    assert number(aggregated["Conversations ok"]) == report["conversations"]["succeeded"]
    assert number(aggregated["Conversations failed"]) == report["conversations"]["failed"]
    for title, (key, figure) in TIMINGS.items():
        assert number(aggregated[title]) == pytest.approx(report[key][figure], abs=0.01), title
    assert set(rows) == {"Aggregated", *report["models"]}
    for model, figures in report["models"].items():
        assert number(rows[model]["Messages"]) == figures["messages"]
        assert number(rows[model]["Failures"]) == figures["failures"]
        assert number(rows[model]["Input tokens"]) == figures["tokens"]["input"]
        assert number(rows[model]["Output tokens"]) == figures["tokens"]["output"]
        assert rows[model]["Conversations ok"] in ("", "-")  # counted for the whole run only


def assert_charts_drawn(charts: dict[str, list[str]]) -> None:
    assert charts == {
        "output_tokens_per_s": ["output tokens/s"],
        "messages_per_s": ["messages/s"],
        "ttft_ms": ["p50", "p95"],
        "e2e_ms": ["p50", "p95"],
    }


def test_headless_html_report_has_the_llm_table_and_charts(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10")
    run = replay(tmp_path, simulator.base_url, "--html", "reports/run-{u}u.html", users=4, seconds=5)
    assert run.returncode == 0, run.output
    report = run.summary()
    page = (tmp_path / "reports" / "run-4u.html").read_text(encoding="utf-8")
    section = llm_section(page)
    assert_rows_match_summary(section.rows, report)
    assert report["messages"]["total"] == simulator.stats()["completions_served"]
    assert_charts_drawn(section.charts)
    # Locust's own report is still all there, before the LLM section.
    assert "window.templateArgs" in page and page.index("window.templateArgs") < page.index("bagstress-llm")


# Run in a child process: importing Locust here would patch ssl after pytest's plugins imported it.
DRAW_LONG_HISTORY = """
import json, sys
from bagstress_locust.metrics import LLMMetrics
from bagstress_locust.report import HistoryRecorder
from bagstress_locust.selfcheck import LoadGeneratorMonitor
from bagstress_locust.webui import render_charts, render_report_section

metrics, history = LLMMetrics(), HistoryRecorder()
metrics.started_at = 1_000.0
columns = HistoryRecorder.COLUMNS
for i in range(2_000):  # 66 minutes of 2-s intervals, TTFT missing in ten of them
    row = [0] * len(columns)
    row[columns.index("Elapsed s")] = 2.0 * (i + 1)
    row[columns.index("TTFT p50")] = None if 1_000 <= i < 1_010 else 50.0
    history.rows.append(row)
metrics.by_model["<b>odd & model</b>"] = metrics.total
json.dump({"charts": render_charts(history), "section": render_report_section(metrics, history, LoadGeneratorMonitor()),
           "empty": render_charts(HistoryRecorder())}, sys.stdout)
"""


def test_report_section_escapes_names_and_thins_long_histories() -> None:
    drawn = subprocess.run([sys.executable, "-c", DRAW_LONG_HISTORY], capture_output=True, text=True, check=True)
    out = json.loads(drawn.stdout)
    points = re.findall(r'<polyline data-series="p50" points="([^"]*)"', out["charts"])
    assert len(points) == 3  # TTFT p50 on either side of its gap, and E2E p50
    assert sum(len(p.split()) for p in points[:2]) <= 720
    assert points[2].split()[-1].startswith("466.0,")  # the last interval is kept, at the right edge
    assert ">15:00<" in out["charts"] and ">1:00:00<" in out["charts"]  # clock-friendly ticks
    assert "<b>odd" not in out["section"] and "&lt;b&gt;odd &amp; model&lt;/b&gt;" in out["section"]
    assert "The LLM charts fill in" in out["empty"]
