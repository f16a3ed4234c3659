"""The LLM figures in Locust's web UI and in its HTML report.

    register_web_ui(environment, metrics, history, monitor)   # BagstressPlugin's init handler calls it

On the process that reports (a single local process, or the master with the merged figures):

* an **LLM** tab, through Locust's ``extended_tabs`` / ``extended_tables``: one row per model and
  an Aggregated row (``report.table_rows``: the columns of ``--csv``'s ``PREFIX_llm_stats.csv``,
  times in ms), plus conversations ok/failed, counted for the whole run only (the Aggregated row).
  The rows ride along in ``/stats/requests`` as ``extended_stats``, which the UI polls every 2 s
  while a test runs, so the tab updates live;
* charts under that table: output tokens/s, messages/s, TTFT p50/p95 and E2E p50/p95 per 2-s
  interval (``report.HistoryRecorder``), and above them the self-check's warning whenever a
  process's own lag inflates the latency figures (``selfcheck``, as on the console). Locust's
  bundle renders an extended tab as a table only, so a small script (``web/llm-tab.js``, added to
  the UI's page) puts a panel under the table and refreshes it every 2 s with SVG drawn here
  (``GET ./bagstress/llm/charts``): no chart library, nothing loaded from the internet;
* three links in *Download Data*, ``llm_stats.csv``, ``llm_stats_history.csv`` and
  ``llm_load_generator.csv``: the same files as ``--csv PREFIX`` writes, from the same figures;
* ``GET ./bagstress/llm``: the table, the summary (``report.summary``, as ``--summary-json``) and
  the history, as JSON;
* the LLM section (the table, the self-check per process and the same charts as static SVG) in the
  HTML report, in the UI's *Download Report* and in the ``--html`` file, headless or not. Locust
  renders that report from its own template with no extension point, so the section is added to
  the finished page: to the ``/stats/report`` response, and at ``quitting`` to the file Locust has
  just written.

Routes honour ``--web-base-path`` and ``--web-login``. Nothing here touches the API key: it is
not an option (options.py), so it is in no template argument, page or response.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import time
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from locust.env import Environment
from locust.util.date import format_safe_timestamp

from flask import Blueprint, Response, jsonify, make_response, request

from .metrics import LLMMetrics
from .report import (
    _TABLE_COLUMNS,
    LOAD_GENERATOR_COLUMNS,
    HistoryRecorder,
    load_generator,
    load_generator_rows,
    summary,
    table_rows,
)
from .selfcheck import LoadGeneratorMonitor

__all__ = [
    "LLMWebUI",
    "register_web_ui",
    "render_charts",
    "render_report_section",
    "render_warnings",
    "table_columns",
    "table_data",
]

TAB_KEY = "llm"
SECTION_ID = "bagstress-llm"
_SCRIPT = Path(__file__).with_name("web") / "llm-tab.js"
_TIMING_PREFIXES = ("TTFT", "ITL", "E2E", "TPOT")
_CONVERSATION_COLUMNS = (("conversations_ok", "Conversations ok"), ("conversations_failed", "Conversations failed"))
_MAX_CHART_POINTS = 720  # a long run is thinned to this many intervals per chart (24 min at 2 s)
_MIN_INTERVAL_S = 0.5
_COLORS = ("#1976d2", "#ed6c02")
# (data-chart key, title, [(legend, HistoryRecorder column)])
_CHARTS = (
    ("output_tokens_per_s", "Output tokens/s", (("output tokens/s", "Output tokens/s"),)),
    ("messages_per_s", "Messages/s", (("messages/s", "Messages/s"),)),
    ("ttft_ms", "TTFT (ms)", (("p50", "TTFT p50"), ("p95", "TTFT p95"))),
    ("e2e_ms", "E2E latency (ms)", (("p50", "E2E p50"), ("p95", "E2E p95"))),
)


def _key(header: str) -> str:
    """A column's key, e.g. ``output_tokens_per_s`` for "Output tokens/s" (the UI camelCases keys)."""
    return re.sub(r"[^a-z0-9]+", "_", header.lower().replace("/s", " per s")).strip("_")


def table_columns() -> list[dict[str, str]]:
    """The LLM tab's columns, as Locust's ``extended_tables`` structure: ``--csv``'s, then conversations."""
    columns = [
        {"key": _key(header), "title": f"{header} (ms)" if header.startswith(_TIMING_PREFIXES) else header}
        for header in _TABLE_COLUMNS
    ]
    return columns + [{"key": key, "title": title} for key, title in _CONVERSATION_COLUMNS]


def table_data(metrics: LLMMetrics) -> list[dict[str, Any]]:
    """One dict per model and the Aggregated one last; ``None`` where a figure has no data yet.

    Conversations are counted for the whole run, not per model: only the Aggregated row has them.
    """
    keys = [_key(header) for header in _TABLE_COLUMNS]
    rows = table_rows(metrics, metrics.duration_s)
    data = []
    for index, row in enumerate(rows):
        item: dict[str, Any] = dict(zip(keys, row, strict=True))
        aggregated = index == len(rows) - 1
        item["conversations_ok"] = metrics.conversations_succeeded if aggregated else None
        item["conversations_failed"] = metrics.conversations_failed if aggregated else None
        data.append(item)
    return data


def _shown(value: Any) -> Any:
    return "-" if value is None else value


# ---- charts: SVG drawn here, for the live tab and the static report alike -----------------------------


def _nice_step(rough: float) -> float:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten that is at least ``rough``."""
    if rough <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(rough))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= rough)


def _time_step(rough: float) -> float:
    """A clock-friendly tick interval in seconds, at least ``rough``."""
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
    return next((s for s in steps if s >= rough), 3600 * math.ceil(rough / 3600))


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _elapsed(seconds: float) -> str:
    """Elapsed time as m:ss, or h:mm:ss from an hour on."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


def _line_chart(key: str, title: str, x: list[float], series: list[tuple[str, list[float | None], str]]) -> str:
    """One chart: a line per series over elapsed time, y from 0, gaps where a value is missing."""
    width, height, left, right, top, bottom = 480, 220, 56, 14, 40, 28
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None]
    y_step = _nice_step(max(values, default=0) / 4)
    y_max = 4 * y_step
    x0, x1 = (x[0], x[-1]) if x else (0.0, 1.0)
    span = (x1 - x0) or 1.0

    def px(value: float) -> float:
        return round(left + (value - x0) / span * plot_w, 1)

    def py(value: float) -> float:
        return round(top + plot_h - value / y_max * plot_h, 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" data-chart="{key}" style="width:100%;height:auto;display:block;'
        'font-family:Roboto,Helvetica,Arial,sans-serif;font-size:11px">',
        f'<text x="{left}" y="16" fill="currentColor" style="font-size:13px;font-weight:600">{escape(title)}</text>',
    ]
    legend_x = width - right
    for label, _, color in reversed(series):
        out.append(f'<text x="{legend_x}" y="16" text-anchor="end" fill="currentColor">{escape(label)}</text>')
        legend_x -= 6 * len(label) + 6
        out.append(
            f'<line x1="{legend_x - 16}" y1="12" x2="{legend_x - 2}" y2="12" stroke="{color}" stroke-width="2"/>'
        )
        legend_x -= 28
    for i in range(5):
        y = py(i * y_step)
        out.append(
            f'<line x1="{left}" y1="{y}" x2="{width - right}" y2="{y}" stroke="currentColor" stroke-opacity="0.15"/>'
            f'<text x="{left - 6}" y="{y + 4}" text-anchor="end" fill="currentColor" fill-opacity="0.8">'
            f"{_number(i * y_step)}</text>"
        )
    x_step = _time_step(span / 6)
    tick = math.ceil(x0 / x_step) * x_step
    while tick <= x1 + 1e-9:
        out.append(
            f'<text x="{px(tick)}" y="{height - 8}" text-anchor="middle" fill="currentColor" fill-opacity="0.8">'
            f"{_elapsed(tick)}</text>"
        )
        tick += x_step
    for label, vs, color in series:
        segment: list[str] = []
        segments = [segment]
        for xv, yv in zip(x, vs, strict=True):
            if yv is None:
                segment = []
                segments.append(segment)
            else:
                segment.append(f"{px(xv)},{py(yv)}")
        for points in filter(None, segments):
            out.append(
                f'<polyline data-series="{escape(label)}" points="{" ".join(points)}" fill="none" '
                f'stroke="{color}" stroke-width="2" stroke-linejoin="round"/>'
            )
        if len(x) <= 30:  # few intervals: dots, with the value on hover
            for xv, yv in zip(x, vs, strict=True):
                if yv is not None:
                    out.append(
                        f'<circle cx="{px(xv)}" cy="{py(yv)}" r="2.5" fill="{color}">'
                        f"<title>{escape(label)} at {_elapsed(xv)}: {_number(yv)}</title></circle>"
                    )
    out.append("</svg>")
    return "".join(out)


def render_charts(history: HistoryRecorder) -> str:
    """The four charts of the run so far, as an HTML fragment (inline SVG, inline styles)."""
    # A first interval of a few ms (the sampler ticked just after the start) is noise, not a rate.
    column = {name: i for i, name in enumerate(HistoryRecorder.COLUMNS)}
    elapsed = column["Elapsed s"]
    rows = [row for i, row in enumerate(history.rows) if i or row[elapsed] >= _MIN_INTERVAL_S]
    if not rows:
        return (
            '<p class="bagstress-charts-empty" style="opacity:0.7">'
            "The LLM charts fill in every 2 s while a test runs.</p>"
        )
    if len(rows) > _MAX_CHART_POINTS:
        stride = math.ceil(len(rows) / _MAX_CHART_POINTS)
        rows = rows[::-1][::stride][::-1]  # thinned, keeping the latest interval
    x = [row[elapsed] for row in rows]
    figures = []
    for key, title, lines in _CHARTS:
        series = [
            (label, [row[column[name]] for row in rows], _COLORS[i % len(_COLORS)])
            for i, (label, name) in enumerate(lines)
        ]
        figures.append(f'<figure style="margin:0">{_line_chart(key, title, x, series)}</figure>')
    return (
        '<div class="bagstress-charts" style="display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));'
        'gap:16px 32px;margin:16px 0">' + "".join(figures) + "</div>"
    )


def render_warnings(metrics: LLMMetrics, monitor: LoadGeneratorMonitor) -> str:
    """The self-check's warnings, one per inflated process, as an alert; empty when there are none."""
    lines = monitor.warnings(metrics.total.timings["ttft"].quantile(0.5))
    if not lines:
        return ""
    paragraphs = "".join(f'<p style="margin:4px 0">{escape(line)}</p>' for line in lines)
    return (
        '<div class="bagstress-warning" role="alert" style="border-left:4px solid #ed6c02;'
        f'background:rgba(237,108,2,0.1);padding:8px 12px;margin:12px 0">{paragraphs}</div>'
    )


# ---- the HTML report's section ----------------------------------------------------------------------------

_SECTION_STYLE = f"""<style>
#{SECTION_ID} {{ max-width: 1200px; margin: 32px auto; padding: 0 24px; font-family: Roboto, Helvetica, Arial,
  sans-serif; color: inherit; }}
#{SECTION_ID} h2 {{ font-size: 2.125rem; font-weight: 400; margin: 0 0 8px; }}
#{SECTION_ID} h3 {{ font-size: 1.5rem; font-weight: 400; margin: 24px 0 8px; }}
#{SECTION_ID} .bagstress-table-wrap {{ overflow-x: auto; }}
#{SECTION_ID} table {{ border-collapse: collapse; width: 100%; font-size: 0.875rem; }}
#{SECTION_ID} th, #{SECTION_ID} td {{ padding: 6px 10px; border-bottom: 1px solid rgba(128, 128, 128, 0.3);
  text-align: right; white-space: nowrap; }}
#{SECTION_ID} th:first-child, #{SECTION_ID} td:first-child {{ text-align: left; }}
#{SECTION_ID} tr.bagstress-aggregated td {{ font-weight: 600; }}
</style>"""


def render_report_section(metrics: LLMMetrics, history: HistoryRecorder, monitor: LoadGeneratorMonitor) -> str:
    """The LLM table, the self-check and the charts as a self-contained ``<section>`` for Locust's HTML report."""
    columns = table_columns()
    data = table_data(metrics)
    head = "".join(f"<th>{escape(c['title'])}</th>" for c in columns)
    body = []
    for index, row in enumerate(data):
        css = ' class="bagstress-aggregated"' if index == len(data) - 1 else ""
        cells = "".join(f'<td data-key="{c["key"]}">{escape(str(_shown(row[c["key"]])))}</td>' for c in columns)
        body.append(f'<tr{css} data-name="{escape(str(row["name"]))}">{cells}</tr>')
    estimated = " Token counts are estimated: the server sent no usage." if metrics.tokens_estimated else ""
    return (
        f'<section id="{SECTION_ID}">{_SECTION_STYLE}<h2>LLM Statistics</h2>'
        f"<p>Times in ms, over successful messages; output tokens/s over the run's {metrics.duration_s:.1f} s. "
        f"Conversations are counted for the whole run.{estimated}</p>{render_warnings(metrics, monitor)}"
        f'<div class="bagstress-table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        f"{_load_generator_table(load_generator(metrics, monitor))}"
        f"<h3>LLM Charts</h3><p>Per 2-second interval.</p>{render_charts(history)}</section>"
    )


def _load_generator_table(verdict: dict[str, Any]) -> str:
    rows = load_generator_rows(verdict)
    if not rows:
        return ""
    head = "".join(f"<th>{escape(title)}</th>" for title in LOAD_GENERATOR_COLUMNS)
    body = "".join(
        f'<tr data-process="{escape(str(row[0]))}">'
        + "".join(f"<td>{escape(str(_shown(value)))}</td>" for value in row)
        + "</tr>"
        for row in rows
    )
    return (
        "<h3>Load generator</h3><p>Each process that ran users measured how late it answered its own sockets "
        "(scheduling lag); above the limit, its latency figures are inflated by the load generator itself.</p>"
        f'<div class="bagstress-table-wrap"><table class="bagstress-load-generator"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def add_to_page(page: str, fragment: str) -> str:
    """``fragment`` inserted at the end of the page's body."""
    at = page.rfind("</body>")
    return page + fragment if at < 0 else page[:at] + fragment + "\n" + page[at:]


# ---- the wiring -----------------------------------------------------------------------------------------


class LLMWebUI:
    """The LLM tab, charts, downloads and report section of one reporting Locust process."""

    def __init__(self, metrics: LLMMetrics, history: HistoryRecorder, monitor: LoadGeneratorMonitor) -> None:
        self.metrics = metrics
        self.history = history
        self.monitor = monitor
        self._registered_at = time.time()
        self._runs = 0

    def register(self, environment: Environment) -> None:
        """Extend the web UI if this process has one; extend the ``--html`` file in any case."""
        environment.events.quitting.add_listener(self._on_quitting)
        web_ui = environment.web_ui
        if web_ui is None:
            return
        environment.events.test_start.add_listener(self._on_test_start)
        args = web_ui.template_args
        args["extended_tabs"] = [*args.get("extended_tabs", []), {"title": "LLM", "key": TAB_KEY}]
        args["extended_tables"] = [*args.get("extended_tables", []), {"key": TAB_KEY, "structure": table_columns()}]
        args["extended_csv_files"] = [
            *args.get("extended_csv_files", []),
            {"href": "./bagstress/llm_stats.csv", "title": "Download LLM statistics CSV"},
            {"href": "./bagstress/llm_stats_history.csv", "title": "Download LLM statistics history CSV"},
            {"href": "./bagstress/llm_load_generator.csv", "title": "Download LLM load generator self-check CSV"},
        ]
        options = environment.parsed_options
        blueprint = Blueprint("bagstress", __name__, url_prefix=getattr(options, "web_base_path", None) or None)
        routes = {
            "/bagstress/llm": self._json,
            "/bagstress/llm/charts": self._charts,
            "/bagstress/llm_stats.csv": lambda: self._csv(environment, "llm_stats", self._stats_csv),
            "/bagstress/llm_stats_history.csv": lambda: self._csv(environment, "llm_stats_history", self._history_csv),
            "/bagstress/llm_load_generator.csv": lambda: self._csv(
                environment, "llm_load_generator", self._load_generator_csv
            ),
            "/bagstress/llm-tab.js": self._script,
        }
        for rule, view in routes.items():
            endpoint = rule.rsplit("/", 1)[1].replace(".", "_").replace("-", "_")
            blueprint.add_url_rule(rule, endpoint, web_ui.auth_required_if_enabled(view))
        assert web_ui.app is not None  # Locust creates the Flask app with the web UI
        web_ui.app.register_blueprint(blueprint)
        web_ui.app.after_request(self._extend_locust_response)

    # ---- routes -----------------------------------------------------------------------------------------

    def _json(self) -> Response:
        return jsonify(
            {
                "columns": table_columns(),
                "rows": table_data(self.metrics),
                "summary": summary(self.metrics, self.monitor),
                "history": {"columns": list(HistoryRecorder.COLUMNS), "rows": self.history.rows},
            }
        )

    def _charts(self) -> Response:
        response = make_response(render_warnings(self.metrics, self.monitor) + render_charts(self.history))
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _stats_csv(self) -> str:
        # The same rows and header as report.write_csv's PREFIX_llm_stats.csv.
        file = io.StringIO()
        writer = csv.writer(file)
        writer.writerow(_TABLE_COLUMNS)
        writer.writerows(table_rows(self.metrics, self.metrics.duration_s))
        return file.getvalue()

    def _load_generator_csv(self) -> str:
        # The same rows and header as report.write_csv's PREFIX_llm_load_generator.csv.
        file = io.StringIO()
        writer = csv.writer(file)
        writer.writerow(LOAD_GENERATOR_COLUMNS)
        writer.writerows(load_generator_rows(load_generator(self.metrics, self.monitor)))
        return file.getvalue()

    def _history_csv(self) -> str:
        file = io.StringIO()
        self.history.write(file)
        return file.getvalue()

    @staticmethod
    def _csv(environment: Environment, name: str, render: Callable[[], str]) -> Response:
        response = make_response(render())
        started = format_safe_timestamp(environment.stats.start_time)
        response.headers["Content-Type"] = "text/csv"
        response.headers["Content-Disposition"] = f"attachment;filename=Locust_{started}_{name}.csv"
        return response

    @staticmethod
    def _script() -> Response:
        response = make_response(_SCRIPT.read_text(encoding="utf-8"))
        response.headers["Content-Type"] = "application/javascript; charset=utf-8"
        return response

    def _extend_locust_response(self, response: Response) -> Response:
        """Add the LLM rows to the UI's stats poll, our script to its page and our section to its report."""
        if response.status_code != 200 or response.direct_passthrough:
            return response
        endpoint = request.endpoint
        if endpoint == "locust.request_stats" and response.is_json:
            # Locust's example (examples/extend_web_ui.py) extends this response the same way.
            payload = response.get_json()
            rows = [{k: _shown(v) for k, v in row.items()} for row in table_data(self.metrics)]
            others = [entry for entry in payload.get("extended_stats") or [] if entry.get("key") != TAB_KEY]
            payload["extended_stats"] = [*others, {"key": TAB_KEY, "data": rows}]
            response.set_data(json.dumps(payload))
        elif endpoint == "locust.index" and response.mimetype == "text/html":
            script = '<script src="./bagstress/llm-tab.js" defer></script>'
            response.set_data(add_to_page(response.get_data(as_text=True), script))
        elif endpoint == "locust.stats_report" and response.mimetype == "text/html":
            section = render_report_section(self.metrics, self.history, self.monitor)
            response.set_data(add_to_page(response.get_data(as_text=True), section))
        return response

    # ---- event handlers ---------------------------------------------------------------------------------

    def _on_test_start(self, **_: Any) -> None:
        # Locust clears its own stats when the UI starts a new run; the LLM figures and charts follow.
        self._runs += 1
        if self._runs > 1:
            self.metrics.reset()
            self.history.clear()

    def _on_quitting(self, environment: Environment, **_: Any) -> None:
        # Locust has written --html (when the run ended or on Ctrl+C) just before ``quitting``; it
        # writes none on SIGTERM, so a file older than this process is someone else's and stays as it is.
        path = getattr(environment.parsed_options, "html_file", None)
        if not path or not os.path.isfile(path) or os.path.getmtime(path) < self._registered_at:
            return
        page = Path(path).read_text(encoding="utf-8")
        if f'<section id="{SECTION_ID}">' in page:
            return
        section = render_report_section(self.metrics, self.history, self.monitor)
        Path(path).write_text(add_to_page(page, section), encoding="utf-8")


def register_web_ui(
    environment: Environment, metrics: LLMMetrics, history: HistoryRecorder, monitor: LoadGeneratorMonitor
) -> LLMWebUI:
    """Show ``metrics``, ``history`` and the self-check in the web UI (if any) and the HTML report; once per process."""
    web = LLMWebUI(metrics, history, monitor)
    web.register(environment)
    return web
