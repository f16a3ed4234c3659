"""A misbehaving endpoint: every failure counted once with its reason, nothing lost, nothing leaked.

Each test injects faults with the simulator, which counts what it injected and what it served;
the run's own summary must agree with it exactly.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bagstress_locust.conversations import fingerprint, load_conversations
from bagstress_locust.tokens import estimate_tokens

from .conftest import CONVERSATIONS, LOCUST, clean_env, replay, replay_args, run_locust, summary_of

FAST_REPLY = ("--ttft", "0.01", "--itl", "0.002", "--output-tokens", "8")
FIRST_THREE_TOKENS = "lorem ipsum dolor "  # what a stream broken after 3 chunks had delivered


def faulty_run(tmp_path: Path, simulator, *extra: str, seconds: int = 3):
    return replay(tmp_path, simulator.base_url, "--read-timeout", "1", "--csv", "run", *extra, users=4, seconds=seconds)


def assert_successes_exact(report: dict[str, Any], truth: dict[str, Any]) -> None:
    assert report["messages"]["succeeded"] == truth["completions_served"] > 0
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["tokens"]["output"] == truth["completion_tokens_served"]


FAULTS = [
    # simulator flag, counter name, the reason our reports give
    ("--fault-429", "http_429", "HTTP 429 Too Many Requests"),
    ("--fault-500", "http_500", "HTTP 500 Internal Server Error"),
    ("--fault-503", "http_503", "HTTP 503 Service Unavailable"),
    ("--fault-reset", "reset", "stream reset after 3 chunks"),
    ("--fault-stall", "stall", "read timeout after 1 s"),
    ("--fault-malformed", "malformed", "malformed chunk"),
    ("--fault-no-done", "no_done", "stream ended without [DONE]"),
    ("--fault-slow-first-byte", "slow_first_byte", "read timeout after 1 s"),
    ("--fault-empty-stream", "empty_stream", "empty reply"),
    ("--fault-no-finish-reason", "no_finish_reason", "stream ended without finish_reason"),
]


@pytest.mark.parametrize(("flag", "counter", "reason"), FAULTS, ids=[f[1] for f in FAULTS])
def test_each_fault_is_one_failure_with_its_reason(
    tmp_path: Path, start_simulator, flag: str, counter: str, reason: str
) -> None:
    simulator = start_simulator(*FAST_REPLY, flag, "0.3", "--seed", "7", "--fault-after-chunks", "3",
                                "--slow-first-byte-delay", "2")  # fmt: skip
    run = faulty_run(tmp_path, simulator)
    truth, report = simulator.stats(), summary_of(tmp_path)
    injected = truth["faults"][counter]
    assert injected > 0
    assert report["messages"]["failed"] == injected
    assert report["errors"] == {reason: injected}
    assert_successes_exact(report, truth)
    assert report["messages"]["total"] == report["messages"]["succeeded"] + injected
    # Locust's own failure table (one row per model) says the same.
    with open(tmp_path / "run_failures.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert {row["Error"] for row in rows} == {f"MessageFailed('{reason}')"}
    assert sum(int(row["Occurrences"]) for row in rows) == injected
    if counter in ("reset", "malformed"):
        # Tokens that arrived before the break are counted apart from the output, never in it.
        assert report["tokens"]["output_in_failed"] == injected * estimate_tokens(FIRST_THREE_TOKENS)
    assert run.returncode == 1  # failures make Locust's exit code non-zero, as users expect
    assert "Traceback" not in run.output


def test_sse_pings_are_ignored(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(*FAST_REPLY, "--sse-ping")
    run = faulty_run(tmp_path, simulator)
    assert run.returncode == 0, run.output
    truth, report = simulator.stats(), summary_of(tmp_path)
    assert report["messages"]["failed"] == 0
    assert_successes_exact(report, truth)


def test_capped_replies_succeed_and_are_counted(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(*FAST_REPLY, "--record-requests")
    run = faulty_run(tmp_path, simulator, "--max-tokens", "5")
    assert run.returncode == 0, run.output
    truth, report = simulator.stats(), summary_of(tmp_path)
    assert_successes_exact(report, truth)
    assert report["messages"]["length_capped"] == report["messages"]["total"]
    assert truth["completion_tokens_served"] == 5 * truth["completions_served"]
    assert all(r.get("max_completion_tokens", r.get("max_tokens")) == 5 for r in simulator.requests())


def test_retries_are_each_a_visible_attempt(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(*FAST_REPLY, "--fault-503", "0.3", "--seed", "3")
    faulty_run(tmp_path, simulator, "--max-retries", "2")
    truth, report = simulator.stats(), summary_of(tmp_path)
    # Every attempt the server saw is one message in the figures: retries hide nothing.
    assert report["messages"]["total"] == truth["chat_requests"]
    assert report["messages"]["failed"] == truth["faults"]["http_503"]
    assert_successes_exact(report, truth)
    # With 3 attempts a conversation fails only on 3 faults in a row: far fewer failed conversations.
    assert report["conversations"]["failed"] < truth["faults"]["http_503"] / 2


def test_wrong_api_key_stops_the_run_with_one_line(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(*FAST_REPLY, "--api-key", "sk-right")
    run = run_locust(
        tmp_path, "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS), "-u", "2", "-t", "5s",
        env=clean_env(OPENAI_API_KEY="sk-wrong"),
    )  # fmt: skip
    assert run.returncode == 1
    assert "refused the API key (HTTP 401 Unauthorized): set OPENAI_API_KEY" in run.output
    assert "Traceback" not in run.output
    assert simulator.stats()["chat_requests"] == 0


def test_a_filter_that_leaves_no_model_stops_the_run(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(*FAST_REPLY)
    (tmp_path / "model_filter.txt").write_text("sim-small\nsim-medium\nsim-large\n")
    run = run_locust(tmp_path, "--host", simulator.base_url, "--conversations-dir", str(CONVERSATIONS), "-t", "5s")
    assert run.returncode == 1
    assert "the model filter leaves none: set --model" in run.output
    assert "Traceback" not in run.output
    assert simulator.stats()["chat_requests"] == 0


def test_stopping_cancels_in_flight_messages_without_blaming_the_server(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "5", "--itl", "0.01", "--output-tokens", "3")
    started = time.monotonic()
    run = replay(tmp_path, simulator.base_url, "--csv", "run", users=3, seconds=2, stop_timeout=0)
    assert time.monotonic() - started < 15  # in-flight streams end at once, not after their 5 s
    assert run.returncode == 0, run.output
    report = run.summary()
    assert report["messages"]["cancelled"] == 3
    assert report["messages"]["total"] == report["messages"]["failed"] == 0
    assert (tmp_path / "run_llm_stats.csv").exists()
    assert "Cancelled at stop: 3" in run.output


def test_the_api_key_appears_in_no_output(tmp_path: Path, start_simulator) -> None:
    secret = "sk-bagstress-SECRET-4242"
    simulator = start_simulator(*FAST_REPLY, "--api-key", secret, "--fault-500", "0.2", "--fault-reset", "0.2")
    run = replay(
        tmp_path, simulator.base_url, "--loglevel", "DEBUG", "--csv", "run", "--csv-full-history", "--html",
        "report.html", users=3, stop_timeout=5, env=clean_env(OPENAI_API_KEY=secret),
    )  # fmt: skip
    assert simulator.stats()["completions_served"] > 0  # the key was used, and accepted
    assert secret not in run.output
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"summary.json", "report.html", "run_stats.csv", "run_llm_stats.csv"} <= {p.name for p in written}
    for path in written:
        assert secret not in path.read_text(errors="replace"), path


def test_env_files_are_never_committed_or_baked_in() -> None:
    root = Path(__file__).resolve().parent.parent
    assert ".env" in (root / ".gitignore").read_text().split()
    assert ".env" in (root / ".dockerignore").read_text().split()


def test_soak_with_mixed_faults_keeps_memory_bounded_and_totals_exact(tmp_path: Path, start_simulator) -> None:
    """Bounded to ~1 minute: 150 users with every fault mixed in, on one process."""
    faults = ["--fault-429", "0.02", "--fault-500", "0.02", "--fault-503", "0.02", "--fault-reset", "0.02",
              "--fault-malformed", "0.02", "--fault-no-done", "0.02", "--fault-empty-stream", "0.02",
              "--fault-stall", "0.01", "--seed", "11"]  # fmt: skip
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "20", *faults)
    process = subprocess.Popen(
        [*LOCUST, "--headless", *replay_args(simulator.base_url, 150, 45, think_time_scale=0.05), "-r", "50",
         "--read-timeout", "2", "--only-summary"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    peak_rss, samples = 0, []
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss
        except psutil.NoSuchProcess:
            break
        peak_rss = max(peak_rss, rss)
        samples.append(rss)
        time.sleep(1)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output  # failures were injected
    assert "Traceback" not in output
    truth, report = simulator.stats(), summary_of(tmp_path)
    assert_successes_exact(report, truth)
    assert report["messages"]["failed"] == sum(truth["faults"].values())
    # Stated bound: one process with 150 users stays under 400 MB (285 MB seen), and stops growing.
    assert peak_rss < 400 * 2**20, f"peak RSS {peak_rss / 2**20:.0f} MB"
    half = len(samples) // 2
    assert max(samples[half:]) < max(samples[:half]) * 1.25, [s // 2**20 for s in samples]


def test_big_and_odd_conversations_work(tmp_path: Path, start_simulator) -> None:
    folder = tmp_path / "conversations"
    folder.mkdir()
    long_message = "Résumé 🚀 " * 200_000  # ~2.2 MB, one message
    big = {"conversation_id": "big", "messages": [
        {"role": "user", "content": long_message},
        {"role": "assistant", "content": "ok " * 3_000_000},  # the file passes 10 MB
        {"role": "user", "content": "And now? 🤔 ¿Qué?"},
    ]}  # fmt: skip
    (folder / "big.json").write_text(json.dumps(big, ensure_ascii=False), encoding="utf-8")
    assert (folder / "big.json").stat().st_size > 10 * 2**20
    simulator = start_simulator(*FAST_REPLY, "--record-requests")
    run = replay(tmp_path, simulator.base_url, "--cut-probability", "0", seconds=4, conversations=folder)
    assert run.returncode == 0, run.output
    truth, report = simulator.stats(), run.summary()
    assert report["messages"]["failed"] == 0
    assert_successes_exact(report, truth)
    second_turns = [r for r in simulator.requests() if len(r["messages"]) == 3]
    assert second_turns and second_turns[0]["messages"][2]["content"] == "And now? 🤔 ¿Qué?"
    assert second_turns[0]["messages"][0]["content"] == long_message


def test_thousands_of_files_load(tmp_path: Path) -> None:
    for i in range(3000):
        small = {"conversation_id": f"c{i}", "messages": [{"role": "user", "content": f"Question {i} ✓"}]}
        (tmp_path / f"c{i:04}.json").write_text(json.dumps(small, ensure_ascii=False), encoding="utf-8")
    conversations = load_conversations(tmp_path)
    assert len(conversations) == 3000
    assert len(fingerprint(conversations)) == 64


def test_ctrl_c_cancels_in_flight_messages_and_still_writes_every_report(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "5", "--itl", "0.01", "--output-tokens", "3")
    process = subprocess.Popen(
        [*LOCUST, "--headless", *replay_args(simulator.base_url, 2, 60, stop_timeout=0), "--csv", "run"],
        cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while simulator.stats()["chat_requests"] < 2:  # both users are waiting for a reply
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert time.monotonic() - started < 10  # the 5 s replies were not waited for
    assert "Traceback" not in output
    report = summary_of(tmp_path)
    assert report["messages"]["cancelled"] == 2 and report["messages"]["failed"] == 0
    assert (tmp_path / "run_llm_stats.csv").exists() and (tmp_path / "run_stats.csv").exists()
