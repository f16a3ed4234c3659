"""The project's locustfile plus a measurement window, for ``bench/run.py``: a real Locust run of our engines.

    BENCH_OUT=out.json BENCH_WARMUP=3 BENCH_WINDOW=8 uv run locust -f bench/locustfile.py --headless \\
        -u 50 -r 50 --think-time-scale 0 --client-engine fast --host http://127.0.0.1:8000/v1

Once every user has started and ``BENCH_WARMUP`` seconds have passed, it fires Locust's
``reset_stats`` (the LLM figures and the self-check start afresh), measures ``BENCH_WINDOW``
seconds, writes the window's figures (``_harness.Window``, with the plugin's own TTFT/E2E
percentiles and its ``load_generator`` summary) to ``BENCH_OUT`` and stops the run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import gevent
from locust import events
from locust.env import Environment

from bagstress_locust import ConversationUser, register
from bagstress_locust.report import summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Window

plugin = register(events)


class ChatUser(ConversationUser):
    """The shipped locustfile's user, unchanged."""


def _measure(environment: Environment) -> None:
    gevent.sleep(float(os.environ.get("BENCH_WARMUP", "3")))
    environment.events.reset_stats.fire()
    window = Window(environment.host or "")
    window.open()
    gevent.sleep(float(os.environ.get("BENCH_WINDOW", "8")))
    report = summary(plugin.metrics, plugin.monitor)
    load_generator = report["load_generator"]
    local = load_generator["workers"].get("local", {})
    chunks = report["itl_ms"]["count"] + report["ttft_ms"]["count"]  # content chunks of successful messages
    figures = window.close(
        report["messages"]["total"],
        chunks,
        {key: report["ttft_ms"][key] for key in ("p50", "p99", "count")},
        {key: report["latency_ms"][key] for key in ("p50", "p99", "count")},
        {"p50": local.get("lag_p50_ms"), "p99": local.get("lag_p99_ms")},
    )
    figures["errors"] = report["messages"]["failed"]
    figures["load_generator"] = load_generator
    figures["warnings"] = plugin.monitor.warnings(report["ttft_ms"]["p50"])
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(figures) + "\n")
    if environment.runner is not None:
        environment.runner.quit()


_run: dict[str, Any] = {"environment": None, "measuring": False}


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _run["environment"] = environment


@events.spawning_complete.add_listener
def _on_spawning_complete(user_count: int, **_: Any) -> None:
    if "BENCH_OUT" in os.environ and not _run["measuring"]:
        _run["measuring"] = True
        gevent.spawn(_measure, _run["environment"])
