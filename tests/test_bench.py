"""The bench in its smoke mode: every load generator runs once and reports; no speed is asserted.

Benchmarks are not timed tests: on a shared CI machine a threshold would fail for reasons that are
not ours. The full bench (``uv run python bench/run.py``) is run by hand; its results live in
``bench/README.md``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT, clean_env

ENGINES = {"raw", "lc-loop", "langchain", "fast", "langchain-1"}


def test_smoke_run_reports_every_figure(tmp_path: Path) -> None:
    raw_figures = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(raw_figures)],
        capture_output=True, text=True, timeout=180, cwd=ROOT, env=clean_env(),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(raw_figures.read_text())["results"]
    assert {result["engine"] for result in results} == ENGINES
    for result in results:
        figures = result["figures"]
        assert figures["messages"] > 0 and figures["chunks"] > 0, result
        assert figures["errors"] == 0, result
        assert figures["cpu_ms_per_message"] > 0 and figures["rss_mb"] > 0
        assert figures["truth"]["streams"] > 0 and figures["ttft_ms"]["p50"] is not None
        if result["engine"] in {"langchain", "fast", "langchain-1"}:
            assert set(figures["load_generator"]) >= {"lag_p99_ms", "cpu_max_percent", "inflated", "workers"}
    table = [line for line in completed.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(ENGINES)  # the header and one row per load generator
    assert "LangChain engine over a bare ChatOpenAI.stream loop" in completed.stdout
