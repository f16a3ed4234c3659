"""The walking skeleton end to end: real `locust` processes against the real simulator on loopback."""

import json
import re
from pathlib import Path

from .conftest import CONVERSATIONS, clean_env, replay, run_locust

SCRIPT = {
    "conversation_id": "script",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "Scripted answer one."},
        {"role": "user", "content": "Second question?"},
        {"role": "assistant", "content": "Scripted answer two."},
        {"role": "user", "content": "Third question, left unanswered by the script?"},
    ],
}


def chat_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [row for row in rows if row["Type"] == "chat"]


def test_replay_sends_exactly_the_scripted_history(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "5", "--record-requests")
    conversations = tmp_path / "conversations"
    conversations.mkdir()
    (conversations / "script.json").write_text(json.dumps(SCRIPT))
    run = replay(
        tmp_path, simulator.base_url, "--cut-probability", "0", "--model", "sim-small", "--temp-min", "0.3",
        "--temp-max", "0.6", conversations=conversations, stop_timeout=5,
    )  # fmt: skip
    assert run.returncode == 0, run.output
    requests = simulator.requests()
    assert len(requests) >= 6
    script = [(m["role"], m["content"]) for m in SCRIPT["messages"]]
    expected_prefixes = [script[:2], script[:4], script[:6]]
    for request in requests:
        sent = [(m["role"], m["content"]) for m in request["messages"]]
        assert sent in expected_prefixes, sent
        assert request["model"] == "sim-small"
        assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
        assert 0.3 <= request["temperature"] <= 0.6 and round(request["temperature"], 2) == request["temperature"]
        assert "max_tokens" not in request and "max_completion_tokens" not in request
    # Each user replays whole conversations, in order: turn 1, 2, 3, 1, 2, 3, ...
    turns = [len(r["messages"]) for r in requests]
    assert turns.count(2) >= turns.count(4) >= turns.count(6) >= turns.count(2) - 2
    conversations = run.summary()["conversations"]
    assert conversations["total"] == turns.count(6) and conversations["messages_avg"] == 3


def test_headless_run_counts_every_served_message(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.05", "--itl", "0.005", "--output-tokens", "8")
    run = replay(tmp_path, simulator.base_url, "--csv", "run", users=10, seconds=4, think_time_scale=0.05)
    assert run.returncode == 0, run.output
    stats = simulator.stats()
    rows = run.csv_rows()
    chats = chat_rows(rows)
    requests = sum(int(r["Request Count"]) for r in chats)
    assert requests > 0
    assert sum(int(r["Failure Count"]) for r in rows) == 0
    assert requests == stats["completions_served"] == stats["chat_requests"]
    # response_length is the number of output tokens.
    assert sum(int(r["Request Count"]) * float(r["Average Content Size"]) for r in chats) == 8 * requests
    # The model list is fetched once per process and shown as its own request.
    models = [r for r in rows if r["Type"] == "models"]
    assert [int(r["Request Count"]) for r in models] == [stats["models_requests"]] == [1]
    assert {r["Name"] for r in chats} <= {"sim-small", "sim-medium", "sim-large"}
    assert "HTTP Request:" not in run.output  # no log line per message


def test_model_filter_file_removes_models(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "3")
    (tmp_path / "model_filter.txt").write_text("# too big\nsim-large\nsim-medium\n")
    run = replay(tmp_path, simulator.base_url, users=3, stop_timeout=5)
    assert run.returncode == 0, run.output
    assert simulator.stats()["served_by_model"].keys() == {"sim-small"}


def test_unreachable_endpoint_fails_clearly_and_exits_non_zero(tmp_path: Path) -> None:
    run = run_locust(
        tmp_path, "--host", "http://127.0.0.1:9/v1", "--conversations-dir", str(CONVERSATIONS), "-u", "3", "-r", "3",
        "-t", "3s", "--model", "m", "--csv", "run",
    )  # fmt: skip
    assert run.returncode != 0
    # Probed once before any user starts: one failed request, one line saying what to do, no tracebacks.
    rows = run.csv_rows()
    assert sum(int(r["Failure Count"]) for r in rows if r["Name"] != "Aggregated") == 1
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "connection error: Connection refused" in failures
    assert "cannot reach http://127.0.0.1:9/v1 (connection error: Connection refused)" in run.output
    assert "check --host / OPENAI_API_BASE" in run.output
    assert "Traceback" not in run.output


def test_embedded_simulator_is_the_default(tmp_path: Path) -> None:
    run = replay(tmp_path, None, "--sim-ttft", "0.05", "--sim-itl", "0.005", "--csv", "run", users=3, stop_timeout=5)
    assert run.returncode == 0, run.output
    line = re.search(
        r"No endpoint configured: load testing the built-in simulated server at (http://127\.0\.0\.1:\d+/v1)",
        run.output,
    )
    assert line, run.output
    assert "--host http://HOST:PORT/v1" in run.output
    assert sum(int(r["Request Count"]) for r in chat_rows(run.csv_rows())) > 0


def test_openai_api_base_from_dotenv_is_used(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator(
        "--ttft", "0.01", "--itl", "0.001", "--output-tokens", "3", "--api-key", "sk-test-dotenv"
    )
    (tmp_path / ".env").write_text(
        f"OPENAI_API_BASE={simulator.base_url}\nOPENAI_API_KEY=sk-test-dotenv\nMODEL_NAME=sim-large\n"
    )
    run = replay(tmp_path, None, seconds=2, stop_timeout=5)  # the host comes from .env
    assert run.returncode == 0, run.output
    stats = simulator.stats()
    assert stats["completions_served"] > 0 and stats["rejected"] == {}
    assert stats["served_by_model"].keys() == {"sim-large"}
    assert "sk-test-dotenv" not in run.output


def test_bad_conversation_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text(
        '{"conversation_id": "b", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}'
    )
    run = run_locust(tmp_path, "--conversations-dir", str(tmp_path), "-u", "1", "-t", "2s", env=clean_env())
    assert run.returncode == 1
    assert "broken.json: message 1: two user messages in a row" in run.output
    assert "Traceback" not in run.output
