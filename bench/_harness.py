"""What every bench script shares: cores, the simulator, and one measurement window per load generator.

A load generator (ours through Locust, or a reference client) runs ``users`` senders that start
evenly over ``spawn_s`` and send back to back. After ``warmup_s`` more it opens a window of
``window_s`` seconds and reports, as one JSON object, what happened inside it:

* ``messages``, ``chunks``: messages and content chunks it received, and per second;
* ``cpu_ms_per_message``, ``cpu_percent``: its own CPU time (user + system) in the window;
* ``rss_mb``: its resident memory at the end of the window;
* ``ttft_ms``/``e2e_ms``: its p50/p99, and ``truth``: the simulator's served means in the window;
* ``connections``: TCP connections the simulator accepted in the window;
* ``lag``: its scheduling lag (``bagstress_locust.selfcheck.LagProbe``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "SimulatorStats", "Window", "pinned", "start_simulator"]


def pinned(core: int) -> list[str]:
    """A command prefix that pins a child to one core, or nothing where that cannot be done."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return []
    return ["taskset", "-c", str(core)] if core in allowed else []


class SimulatorStats:
    """``GET /sim/stats`` of a running simulator; each call costs it one connection (counted by ``calls``)."""

    def __init__(self, base_url: str) -> None:
        self.origin = base_url.removesuffix("/v1")
        self.calls = 0

    def get(self) -> dict[str, Any]:
        self.calls += 1
        with urllib.request.urlopen(self.origin + "/sim/stats", timeout=10) as response:
            return json.load(response)


def start_simulator(ttft: float, itl: float, tokens: int, core: int | None) -> tuple[subprocess.Popen[str], str]:
    """The simulator as a child (pinned to ``core``); returns the process and its base URL."""
    command = [
        *(pinned(core) if core is not None else []),
        sys.executable, "-m", "bagstress_locust.simulator", "--port", "0", "--exit-on-stdin-eof",
        "--ttft", str(ttft), "--itl", str(itl), "--output-tokens", str(tokens),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("bagstress simulator listening on "):
        process.kill()
        raise RuntimeError(f"the simulator did not start: {line!r}")
    return process, line.rsplit(" ", 1)[1]


class Window:
    """The measurement window of one load generator process (call from inside it, under gevent)."""

    def __init__(self, base_url: str) -> None:
        import psutil

        self._process = psutil.Process()
        self._simulator = SimulatorStats(base_url)
        simulator_pid = os.environ.get("BENCH_SIM_PID")
        self._simulator_process = psutil.Process(int(simulator_pid)) if simulator_pid else None
        self._start: dict[str, Any] = {}

    def _snapshot(self) -> dict[str, Any]:
        times = self._process.cpu_times()
        simulator = self._simulator_process.cpu_times() if self._simulator_process else None
        return {
            "at": time.perf_counter(),
            "cpu": times.user + times.system,
            "sim_cpu": simulator.user + simulator.system if simulator else None,
            "sim": self._simulator.get(),
        }

    def open(self) -> None:
        self._start = self._snapshot()

    def close(
        self, messages: int, chunks: int, ttft_ms: dict[str, Any], e2e_ms: dict[str, Any], lag: dict[str, Any]
    ) -> dict[str, Any]:
        """The window's figures; ``messages``/``chunks`` are what the load generator counted in it."""
        end = self._snapshot()
        start = self._start
        seconds = end["at"] - start["at"]
        cpu = end["cpu"] - start["cpu"]
        sim_start, sim_end = start["sim"], end["sim"]
        timed = sim_end["served_timing"]["streams"] - sim_start["served_timing"]["streams"]

        def served_mean(key: str) -> float | None:
            total_end = (sim_end["served_timing"][key] or 0) * sim_end["served_timing"]["streams"]
            total_start = (sim_start["served_timing"][key] or 0) * sim_start["served_timing"]["streams"]
            return round((total_end - total_start) / timed, 3) if timed else None

        return {
            "seconds": round(seconds, 3),
            "messages": messages,
            "messages_per_s": round(messages / seconds, 2),
            "chunks": chunks,
            "chunks_per_s": round(chunks / seconds, 1),
            "cpu_percent": round(cpu / seconds * 100, 1),
            "cpu_ms_per_message": round(cpu * 1000 / messages, 4) if messages else None,
            "simulator_cpu_percent": (
                round((end["sim_cpu"] - start["sim_cpu"]) / seconds * 100, 1) if start["sim_cpu"] is not None else None
            ),
            "rss_mb": round(self._process.memory_info().rss / 2**20, 1),
            "ttft_ms": ttft_ms,
            "e2e_ms": e2e_ms,
            "truth": {
                "streams": timed,
                "ttft_ms": served_mean("ttft_ms_mean"),
                "e2e_ms": served_mean("e2e_ms_mean"),
                "completions": sim_end["completions_served"] - sim_start["completions_served"],
            },
            # The closing GET /sim/stats opened one connection of its own inside the window.
            "connections": sim_end["connections_opened"] - sim_start["connections_opened"] - 1,
            "lag": lag,
        }
