"""Where the LLM figures are shown: console table and summary, ``--summary-json``, ``--csv`` files.

``summary(metrics, monitor)`` is the one source of every figure; the console report, the JSON file and
the CSV files are renderings of it, so they cannot disagree. Its keys (stable, documented in the
README) are::

    {"duration_s", "conversations": {"total", "succeeded", "failed", "per_minute", "messages_avg", "think_time_avg_s"},
     "messages": {"total", "succeeded", "failed", "per_s", "length_capped", "cancelled"},
     "tokens": {"input", "output", "output_per_s", "output_in_failed", "estimated"},
     "latency_ms" | "ttft_ms" | "itl_ms" | "tpot_ms": {"count", "min", "avg", "max", "p50", "p90", "p95", "p99"},
     "think_time_s", "models": {"<model>": {"messages", "failures", "tokens": {"input", "output"}}},
     "errors": {"<reason>": count},
     "workers": {"<worker id>": {"messages", "failures", "tokens": {"input", "output"}}},  # distributed runs
     "load_generator": {"lag_p99_ms", "cpu_max_percent", "inflated", "threshold_ms", "more_processes",
                        "workers": {"<worker id, or 'local'>": {"lag_p50_ms", "lag_p99_ms", "cpu_max_percent",
                                                                "inflated", "more_processes", "saturated"}}}}

``load_generator`` comes from the self-check (``selfcheck.LoadGeneratorMonitor.summary``, when a
monitor is given): whether our own scheduling lag inflated the latency figures (lag p99 above 3%
of TTFT p50), per process. ``--csv PREFIX`` writes it per process to ``PREFIX_llm_load_generator.csv``.

Times are in milliseconds, rounded to 0.01 ms; an empty distribution has ``null`` figures.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any, TextIO

from .histogram import LogHistogram
from .metrics import PERCENTILES, LLMMetrics, LLMStats
from .selfcheck import LoadGeneratorMonitor

__all__ = [
    "LOAD_GENERATOR_COLUMNS",
    "HistoryRecorder",
    "format_summary",
    "format_table",
    "load_generator",
    "load_generator_rows",
    "summary",
    "write_csv",
    "write_json",
]

_TIMING_KEYS = {"latency": "latency_ms", "ttft": "ttft_ms", "itl": "itl_ms", "tpot": "tpot_ms"}
_TABLE_COLUMNS = (
    "Name",
    "Messages",
    "Failures",
    "TTFT p50",
    "TTFT p95",
    "TTFT p99",
    "ITL p50",
    "ITL p95",
    "E2E p50",
    "E2E p95",
    "TPOT p50",
    "Input tokens",
    "Output tokens",
    "Output tokens/s",
)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def distribution(histogram: LogHistogram) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "count": histogram.count,
        "min": _ms(histogram.min if histogram.count else None),
        "avg": _ms(histogram.mean),
        "max": _ms(histogram.max if histogram.count else None),
    }
    for q in PERCENTILES:
        figures[f"p{round(q * 100)}"] = _ms(histogram.quantile(q))
    return figures


def summary(metrics: LLMMetrics, monitor: LoadGeneratorMonitor | None = None) -> dict[str, Any]:
    """Every figure of the run, as the JSON report has it; with ``monitor``, the self-check's verdict too."""
    total = metrics.total
    duration = metrics.duration_s
    conversations = metrics.conversations_succeeded + metrics.conversations_failed
    result: dict[str, Any] = {
        "duration_s": round(duration, 3),
        "conversations": {
            "total": conversations,
            "succeeded": metrics.conversations_succeeded,
            "failed": metrics.conversations_failed,
            "per_minute": round(conversations / duration * 60, 3) if duration else 0.0,
            "messages_avg": round(metrics.conversation_messages / conversations, 3) if conversations else None,
            "think_time_avg_s": round(metrics.think_time_s / conversations, 3) if conversations else None,
        },
        "messages": {
            "total": total.messages,
            "succeeded": total.messages - total.failures,
            "failed": total.failures,
            "per_s": round(total.messages / duration, 3) if duration else 0.0,
            "length_capped": total.length_capped,
            "cancelled": metrics.cancelled_messages,
        },
        "tokens": {
            "input": total.input_tokens,
            "output": total.output_tokens,
            "output_per_s": round(total.output_tokens / duration, 3) if duration else 0.0,
            "output_in_failed": total.output_in_failed,
            "estimated": metrics.tokens_estimated,
        },
    }
    for name, key in _TIMING_KEYS.items():
        result[key] = distribution(total.timings[name])
    result["think_time_s"] = round(metrics.think_time_s, 3)
    result["models"] = {model: _counts(stats) for model, stats in sorted(metrics.by_model.items())}
    result["errors"] = dict(metrics.errors.most_common())
    if metrics.by_worker:
        result["workers"] = {worker: _counts(stats) for worker, stats in sorted(metrics.by_worker.items())}
    if monitor is not None:
        result["load_generator"] = load_generator(metrics, monitor)
    return result


def load_generator(metrics: LLMMetrics, monitor: LoadGeneratorMonitor) -> dict[str, Any]:
    """The self-check's verdict, per process, judged against the run's TTFT p50 (``summary``'s key)."""
    return monitor.summary(_ms(metrics.total.timings["ttft"].quantile(0.5)))


LOAD_GENERATOR_COLUMNS = (
    "Process",
    "Lag p50 ms",
    "Lag p99 ms",
    "Limit ms",
    "CPU max %",
    "Inflated",
    "More processes",
)


def load_generator_rows(verdict: dict[str, Any]) -> list[list[Any]]:
    """The self-check per process (``load_generator()``), in ``LOAD_GENERATOR_COLUMNS`` order."""
    return [
        [
            name,
            figures["lag_p50_ms"],
            figures["lag_p99_ms"],
            verdict["threshold_ms"],
            figures["cpu_max_percent"],
            figures["inflated"],
            figures["more_processes"],
        ]
        for name, figures in verdict["workers"].items()
    ]


def _counts(stats: LLMStats) -> dict[str, Any]:
    return {
        "messages": stats.messages,
        "failures": stats.failures,
        "tokens": {"input": stats.input_tokens, "output": stats.output_tokens},
    }


def _figure(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def format_summary(report: dict[str, Any]) -> str:
    """The end-of-run report, the seed tool's session summary reworked for Locust."""
    conversations, messages, tokens = report["conversations"], report["messages"], report["tokens"]
    estimated = " (estimated: the server sent no usage)" if tokens["estimated"] else ""

    def share(part: int, whole: int) -> str:
        return f"{part / whole * 100:.1f}%" if whole else "-"

    lines = [
        "=" * 78,
        "BAGSTRESS LLM SUMMARY REPORT",
        "=" * 78,
        f"Duration: {report['duration_s']:.1f} s",
        "",
        "CONVERSATIONS (finished)",
        f"  Total: {conversations['total']:,}   Succeeded: {conversations['succeeded']:,} "
        f"({share(conversations['succeeded'], conversations['total'])})   Failed: {conversations['failed']:,} "
        f"({share(conversations['failed'], conversations['total'])})   Rate: {conversations['per_minute']:.2f}/min",
        f"  Messages per conversation: {_figure(conversations['messages_avg'], 2)}   "
        f"Typing pause per conversation: {_figure(conversations['think_time_avg_s'], 2)} s",
        "",
        "MESSAGES",
        f"  Total: {messages['total']:,}   Succeeded: {messages['succeeded']:,}   Failed: {messages['failed']:,}   "
        f"Rate: {messages['per_s']:.2f}/s   Capped by max tokens: {messages['length_capped']:,}   "
        f"Cancelled at stop: {messages['cancelled']:,}",
        "",
        f"TOKENS{estimated}",
        f"  Input: {tokens['input']:,}   Output: {tokens['output']:,}   Output/s: {tokens['output_per_s']:,.1f}   "
        f"Output received by failed messages: {tokens['output_in_failed']:,}",
        "",
        f"{'TIMING (ms)':<14}{'count':>9}{'min':>10}{'avg':>10}{'p50':>10}{'p90':>10}{'p95':>10}{'p99':>10}{'max':>10}",
    ]
    for label, key in (("E2E latency", "latency_ms"), ("TTFT", "ttft_ms"), ("ITL", "itl_ms"), ("TPOT", "tpot_ms")):
        d = report[key]
        figures = "".join(f"{_figure(d[k]):>10}" for k in ("min", "avg", "p50", "p90", "p95", "p99", "max"))
        lines.append(f"  {label:<12}{d['count']:>9,}{figures}")
    lines += ["", "MODELS USED"]
    for model, figures in report["models"].items():
        lines.append(
            f"  - {model}: {figures['messages']:,} messages ({figures['failures']:,} failed), "
            f"{figures['tokens']['input']:,} input / {figures['tokens']['output']:,} output tokens"
        )
    if not report["models"]:
        lines.append("  (none)")
    lines += ["", "ERRORS"]
    lines += [f"  {count:>7,} x {reason}" for reason, count in report["errors"].items()] or ["  (none)"]
    lines.append("=" * 78)
    return "\n".join(lines)


def table_rows(metrics: LLMMetrics, duration_s: float) -> list[list[Any]]:
    """One row per model and an Aggregated row, in ``_TABLE_COLUMNS`` order."""
    entries: list[tuple[str, LLMStats]] = sorted(metrics.by_model.items())
    entries.append(("Aggregated", metrics.total))
    rows = []
    for name, stats in entries:
        t = stats.timings
        rows.append(
            [
                name,
                stats.messages,
                stats.failures,
                _ms(t["ttft"].quantile(0.5)),
                _ms(t["ttft"].quantile(0.95)),
                _ms(t["ttft"].quantile(0.99)),
                _ms(t["itl"].quantile(0.5)),
                _ms(t["itl"].quantile(0.95)),
                _ms(t["latency"].quantile(0.5)),
                _ms(t["latency"].quantile(0.95)),
                _ms(t["tpot"].quantile(0.5)),
                stats.input_tokens,
                stats.output_tokens,
                round(stats.output_tokens / duration_s, 2) if duration_s else 0.0,
            ]
        )
    return rows


def format_table(metrics: LLMMetrics) -> str:
    """The compact table printed beside Locust's own during a headless run (times in ms)."""
    header = (
        f"{'LLM model':<28}{'msgs':>8}{'fails':>7}{'TTFT p50':>10}{'p95':>9}{'ITL p50':>9}"
        f"{'E2E p50':>10}{'p95':>9}{'in tok':>11}{'out tok':>11}{'out tok/s':>11}"
    )
    lines = [header, "-" * len(header)]
    for row in table_rows(metrics, metrics.duration_s):
        name, msgs, fails, ttft50, ttft95, _, itl50, _, e2e50, e2e95, _, tokens_in, tokens_out, rate = row
        lines.append(
            f"{name[:27]:<28}{msgs:>8,}{fails:>7,}{_figure(ttft50):>10}{_figure(ttft95):>9}{_figure(itl50):>9}"
            f"{_figure(e2e50):>10}{_figure(e2e95):>9}{tokens_in:>11,}{tokens_out:>11,}{rate:>11,.1f}"
        )
    if metrics.tokens_estimated:
        lines.append("(token counts estimated: the server sent no usage)")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def write_csv(report: dict[str, Any], metrics: LLMMetrics, history: HistoryRecorder, prefix: str) -> None:
    """``PREFIX_llm_stats.csv`` (per model and aggregated), ``PREFIX_llm_stats_history.csv`` and, if
    ``report`` (``summary()``) has the self-check, ``PREFIX_llm_load_generator.csv`` (per process)."""
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}_llm_stats.csv", "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(_TABLE_COLUMNS)
        writer.writerows(table_rows(metrics, metrics.duration_s))
    with open(f"{prefix}_llm_stats_history.csv", "w", newline="", encoding="utf-8") as file:
        history.write(file)
    if "load_generator" in report:
        with open(f"{prefix}_llm_load_generator.csv", "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(LOAD_GENERATOR_COLUMNS)
            writer.writerows(load_generator_rows(report["load_generator"]))


class HistoryRecorder:
    """One row per interval: throughput over the interval and its TTFT/E2E percentiles."""

    COLUMNS = (
        "Timestamp",
        "Elapsed s",
        "User count",
        "Messages",
        "Failures",
        "Messages/s",
        "Output tokens/s",
        "TTFT p50",
        "TTFT p95",
        "E2E p50",
        "E2E p95",
        "Total messages",
        "Total output tokens",
    )

    def __init__(self) -> None:
        self.rows: list[list[Any]] = []
        self._previous: LLMStats | None = None
        self._previous_at: float | None = None

    def sample(self, metrics: LLMMetrics, user_count: int, now: float | None = None) -> list[Any]:
        now = time.time() if now is None else now
        total = metrics.total
        previous = self._previous or LLMStats()
        elapsed = now - (self._previous_at or metrics.started_at or now)
        ttft = total.timings["ttft"].since(previous.timings["ttft"])
        latency = total.timings["latency"].since(previous.timings["latency"])
        messages = total.messages - previous.messages
        row = [
            int(now),
            round(now - (metrics.started_at or now), 1),
            user_count,
            messages,
            total.failures - previous.failures,
            round(messages / elapsed, 3) if elapsed > 0 else 0.0,
            round((total.output_tokens - previous.output_tokens) / elapsed, 3) if elapsed > 0 else 0.0,
            _ms(ttft.quantile(0.5)),
            _ms(ttft.quantile(0.95)),
            _ms(latency.quantile(0.5)),
            _ms(latency.quantile(0.95)),
            total.messages,
            total.output_tokens,
        ]
        self.rows.append(row)
        snapshot = LLMStats()
        snapshot.merge(total)
        self._previous, self._previous_at = snapshot, now
        return row

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def write(self, file: TextIO) -> None:
        writer = csv.writer(file)
        writer.writerow(self.COLUMNS)
        writer.writerows(self.rows)
