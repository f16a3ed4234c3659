"""Real peers for the tests: the simulator as a child process on loopback, and real `locust` runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = ROOT / "locustfile.py"
CONVERSATIONS = ROOT / "conversations"
SUMMARY_JSON = "summary.json"
LOCUST = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]


class Simulator:
    """A running `python -m bagstress_locust.simulator`; its counters are the ground truth."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "bagstress_locust.simulator", "--port", "0", "--exit-on-stdin-eof", *args]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        assert line.startswith("bagstress simulator listening on "), line
        self.base_url = line.rsplit(" ", 1)[1]
        self.origin = self.base_url.removesuffix("/v1")

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.origin + path, timeout=10) as response:
            return json.load(response)

    def stats(self) -> dict[str, Any]:
        return self._get("/sim/stats")

    def requests(self) -> list[dict[str, Any]]:
        return self._get("/sim/requests")["requests"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.communicate(timeout=10)  # also closes our ends of the pipes


@pytest.fixture
def start_simulator() -> Iterator[Any]:
    """Start simulators with the given options; all are stopped after the test."""
    started: list[Simulator] = []

    def start(*args: str) -> Simulator:
        simulator = Simulator(*args)
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        simulator.stop()


@dataclass
class LocustRun:
    returncode: int
    stdout: str
    stderr: str
    workdir: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def summary(self) -> dict[str, Any]:
        return summary_of(self.workdir)

    def csv_rows(self, prefix: str = "run") -> list[dict[str, str]]:
        import csv

        with open(self.workdir / f"{prefix}_stats.csv", newline="") as file:
            return list(csv.DictReader(file))


def clean_env(**extra: str) -> dict[str, str]:
    """The test's own environment minus anything that would point a run elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "OPENAI_"))}
    for name in ("MODEL_NAME", "TEMPERATURE", "MAX_TOKENS"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_locust(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> LocustRun:
    """Run `locust -f locustfile.py` headless in ``workdir`` (where .env would be read) and wait for it."""
    command = [*LOCUST, "--headless", "--loglevel", "INFO", *args]
    completed = subprocess.run(
        command, cwd=workdir, env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )
    return LocustRun(completed.returncode, completed.stdout, completed.stderr, workdir)


def replay_args(
    host: str | None,
    users: int,
    seconds: int,
    conversations: Path = CONVERSATIONS,
    stop_timeout: float = 10,
    think_time_scale: float = 0,
) -> list[str]:
    """The usual test run: all users at once, replaying without typing pauses, and a --summary-json report.

    ``host`` None is the embedded simulator. Replies in flight at the end finish within ``stop_timeout``.
    """
    return [
        *(["--host", host] if host else []), "--conversations-dir", str(conversations),
        "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", f"{stop_timeout:g}",
        "--think-time-scale", f"{think_time_scale:g}", "--summary-json", SUMMARY_JSON,
    ]  # fmt: skip


def replay(
    workdir: Path,
    host: str | None,
    *extra: str,
    users: int = 2,
    seconds: int = 3,
    env: dict[str, str] | None = None,
    **options: Any,
) -> LocustRun:
    """``run_locust`` with ``replay_args`` (``options`` are theirs) and then ``extra``, which may override them."""
    return run_locust(workdir, *replay_args(host, users, seconds, **options), *extra, env=env)


def summary_of(workdir: Path) -> dict[str, Any]:
    """The --summary-json report that ``replay_args`` asks for."""
    return json.loads((workdir / SUMMARY_JSON).read_text())
