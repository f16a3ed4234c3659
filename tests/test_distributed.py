"""Scale-out with Locust's own distribution: real master and worker processes on loopback.

The master's and workers' arguments are the ones docker-compose.yml runs (``compose_command``),
with only the compose network's names replaced by loopback addresses.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CONVERSATIONS, LOCUST, clean_env, replay
from .test_compose import compose_command


def free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


class Cluster:
    """A headless master and its workers, started with compose's arguments plus the run's own."""

    def __init__(
        self, tmp_path: Path, base_url: str, workers: int, *run: str, conversations: str = str(CONVERSATIONS),
        worker_cwd: Path | None = None,
    ) -> None:  # fmt: skip
        port = free_port()
        master_args = compose_command("master", {"OPENAI_API_BASE": base_url, "WORKERS": str(workers)})
        self.master = subprocess.Popen(
            [*LOCUST, *master_args, "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port", port,
             "--conversations-dir", conversations, "--summary-json", "summary.json", *run],
            cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        # Workers take every bagstress option from the master, as compose's workers do.
        worker_args = compose_command("worker")
        worker_args[worker_args.index("--master-host") + 1] = "127.0.0.1"
        self.workers = [
            subprocess.Popen(
                [*LOCUST, *worker_args, "--master-port", port],
                cwd=worker_cwd or tmp_path,
                env=clean_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(workers)
        ]
        self.tmp_path = tmp_path

    def finish(self, timeout: float = 90) -> tuple[int, str, list[str]]:
        try:
            output, _ = self.master.communicate(timeout=timeout)
        finally:
            worker_outputs = [worker.communicate(timeout=30)[0] for worker in self.workers]
        return self.master.returncode, output, worker_outputs

    def summary(self) -> dict[str, Any]:
        return json.loads((self.tmp_path / "summary.json").read_text())


@pytest.fixture
def start_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters in ``tmp_path``; any process still running after the test is killed."""
    clusters: list[Cluster] = []

    def start(*args: Any, **kwargs: Any) -> Cluster:
        clusters.append(Cluster(tmp_path, *args, **kwargs))
        return clusters[-1]

    yield start
    for cluster in clusters:
        for process in [cluster.master, *cluster.workers]:
            if process.poll() is None:
                process.kill()
            process.communicate()


def assert_totals_equal_served(report: dict[str, Any], truth: dict[str, Any]) -> None:
    assert report["messages"]["total"] == truth["completions_served"] > 0
    assert report["messages"]["failed"] == 0
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["tokens"]["output"] == truth["completion_tokens_served"]
    assert {m: f["messages"] for m, f in report["models"].items()} == truth["served_by_model"]


def test_master_and_two_workers_sum_exactly(start_simulator, start_cluster) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10")
    cluster = start_cluster(simulator.base_url, 2, "-u", "6", "-r", "6", "-t", "5s", "--stop-timeout", "10",
                      "--think-time-scale", "0")  # fmt: skip
    code, output, _ = cluster.finish()
    assert code == 0, output
    truth, report = simulator.stats(), cluster.summary()
    assert_totals_equal_served(report, truth)
    # Both workers contributed, and each one's figures are exactly what it was served.
    assert len(truth["served_by_client"]) == 2
    assert {w: f["messages"] for w, f in report["workers"].items()} == truth["served_by_client"]
    assert "No endpoint configured" not in output


def test_a_killed_worker_loses_nothing_of_the_survivor(start_simulator, start_cluster) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10")
    cluster = start_cluster(simulator.base_url, 2, "-u", "4", "-r", "4", "-t", "12s", "--stop-timeout", "10",
                      "--think-time-scale", "0")  # fmt: skip
    deadline = time.monotonic() + 30
    while len(simulator.stats()["served_by_client"]) < 2:  # both workers are sending
        assert time.monotonic() < deadline, "workers never both sent a message"
        time.sleep(0.2)
    time.sleep(2)
    victim = cluster.workers[1]
    victim.send_signal(signal.SIGKILL)
    code, output, _ = cluster.finish()
    truth, report = simulator.stats(), cluster.summary()
    assert "failed to send heartbeat" in output  # the master noticed
    served = truth["served_by_client"]
    reported = {w: f["messages"] for w, f in report["workers"].items()}
    assert len(served) == len(reported) == 2
    survivor = next(w for w in reported if served[w] == reported[w])  # exactly one is exact: the survivor
    killed = next(w for w in reported if w != survivor)
    # Nothing from the survivor is lost; from the killed worker, only what it had not yet reported.
    assert reported[survivor] == served[survivor]
    assert 0 < reported[killed] <= served[killed]
    assert report["messages"]["total"] == reported[survivor] + reported[killed]
    # The run went on without the killed worker: the survivor was served after the kill.
    assert reported[survivor] > reported[killed]
    assert code in (0, 1), output


def test_processes_gives_the_same_exactness(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "10")
    run = replay(tmp_path, simulator.base_url, "--processes", "2", users=6, seconds=5)
    assert run.returncode == 0, run.output
    truth = simulator.stats()
    report = run.summary()
    assert_totals_equal_served(report, truth)
    assert len(truth["served_by_client"]) == 2
    assert {w: f["messages"] for w, f in report["workers"].items()} == truth["served_by_client"]


def test_processes_start_one_embedded_simulator(tmp_path: Path) -> None:
    run = replay(tmp_path, None, "--processes", "2", "--sim-ttft", "0.02", "--sim-itl", "0.002", users=4)
    assert run.returncode == 0, run.output
    assert run.output.count("No endpoint configured") == 1
    assert "(started by master)" in run.output
    report = run.summary()
    assert report["messages"]["total"] > 0 and len(report["workers"]) == 2


def write_conversation(directory: Path, content: str) -> None:
    directory.mkdir(parents=True)
    conversation = {"conversation_id": "x", "messages": [{"role": "user", "content": content}]}
    (directory / "one.json").write_text(json.dumps(conversation))


def test_a_worker_whose_conversations_differ_is_refused(tmp_path: Path, start_simulator, start_cluster) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "3")
    write_conversation(tmp_path / "conversations", "Hello?")
    write_conversation(tmp_path / "elsewhere" / "conversations", "Hello from another machine?")
    cluster = start_cluster(simulator.base_url, 1, "-u", "2", "-r", "2", "-t", "4s", "--think-time-scale", "0",
                            conversations="conversations", worker_cwd=tmp_path / "elsewhere")  # fmt: skip
    code, output, (worker_output,) = cluster.finish()
    message = "conversations: this worker's conversations differ from the master's"
    assert message in worker_output
    assert message in output  # said on the master too
    assert code == 1
    assert simulator.stats()["chat_requests"] == 0


def test_a_worker_without_the_conversations_is_refused(tmp_path: Path, start_simulator, start_cluster) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "3")
    write_conversation(tmp_path / "conversations", "Hello?")
    (tmp_path / "empty").mkdir()
    cluster = start_cluster(simulator.base_url, 1, "-u", "2", "-r", "2", "-t", "4s", "--think-time-scale", "0",
                            conversations="conversations", worker_cwd=tmp_path / "empty")  # fmt: skip
    code, output, (_worker_output,) = cluster.finish()
    assert "conversations: conversations directory not found" in output
    assert code == 1
    assert simulator.stats()["chat_requests"] == 0


def test_messages_finishing_after_the_end_still_reach_the_master(start_simulator, start_cluster) -> None:
    """Replies longer than Locust's report interval: the last ones finish during --stop-timeout."""
    simulator = start_simulator("--ttft", "2.5", "--itl", "0.01", "--output-tokens", "5")
    cluster = start_cluster(simulator.base_url, 2, "-u", "4", "-r", "4", "-t", "4s", "--stop-timeout", "10",
                            "--think-time-scale", "0")  # fmt: skip
    code, output, _ = cluster.finish()
    assert code == 0, output
    truth, report = simulator.stats(), cluster.summary()
    assert truth["completions_served"] >= 8  # 4 finished during the run, 4 more during --stop-timeout
    assert_totals_equal_served(report, truth)
    assert {w: f["messages"] for w, f in report["workers"].items()} == truth["served_by_client"]
    # Locust's own table on the master counts them too (plus 3 model lists: the probe and each worker's).
    assert re.search(rf"Aggregated\s+{truth['completions_served'] + 3}\s+0\(", output), output[-3000:]
