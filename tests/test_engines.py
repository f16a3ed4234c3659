"""Both engines against the same endpoints: the same requests, figures, failure reasons and connection reuse.

Each engine sends a fixed sequence of messages through ``bench/engine_check.py`` (a subprocess, so
gevent patches only that process), and a seeded simulator injects its faults into the same
messages whichever engine sends them. For what a simulator cannot do (CRLF framing, an error
event, a body delimited by closing the connection, events torn across reads) a canned server on
loopback answers.
"""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, clean_env, replay

ENGINES = ("langchain", "fast")
PER_MESSAGE = ("error", "input_tokens", "output_tokens", "estimated", "finish_reason", "chunks")
EVERY_FAULT = (
    "--seed", "11", "--sse-ping", "--fault-after-chunks", "2", "--slow-first-byte-delay", "0.6",
    "--fault-429", "0.05", "--fault-500", "0.05", "--fault-503", "0.05", "--fault-slow-first-byte", "0.05",
    "--fault-empty-stream", "0.05", "--fault-reset", "0.05", "--fault-stall", "0.04", "--fault-malformed", "0.05",
    "--fault-no-done", "0.05", "--fault-no-finish-reason", "0.05",
)  # fmt: skip


def engine_check(engine: str, host: str, *args: str) -> dict[str, Any]:
    command = [sys.executable, str(ROOT / "bench" / "engine_check.py"), "--engine", engine, "--host", host, *args]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env(), cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout)


def per_message(run: dict[str, Any]) -> list[dict[str, Any]]:
    return [{key: row[key] for key in PER_MESSAGE} for row in run["results"]]


def reset(simulator) -> None:
    import urllib.request

    request = urllib.request.Request(simulator.origin + "/sim/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


def test_same_faults_give_the_same_figures_and_reasons(start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.01", "--itl", "0.002", "--output-tokens", "6", *EVERY_FAULT)
    runs, truths = {}, {}
    for engine in ENGINES:
        reset(simulator)  # the same seeded draws, message for message
        runs[engine] = engine_check(engine, simulator.base_url, "--messages", "60", "--read-timeout", "0.5")
        truths[engine] = simulator.stats()
    langchain, fast = runs["langchain"], runs["fast"]
    assert per_message(fast) == per_message(langchain)

    def counts(run: dict[str, Any]) -> dict[str, Any]:  # the summary without rates, which depend on speed
        summary = run["summary"]
        return {"messages": {k: v for k, v in summary["messages"].items() if k != "per_s"},
                "tokens": {k: v for k, v in summary["tokens"].items() if k != "output_per_s"},
                "errors": summary["errors"]}  # fmt: skip

    assert counts(fast) == counts(langchain)
    assert truths["fast"]["faults"] == truths["langchain"]["faults"]
    # Every fault was met and told by its reason; what the simulator served (slow first bytes time out) was counted.
    reasons = set(fast["summary"]["errors"])
    assert {"HTTP 429 Too Many Requests", "HTTP 500 Internal Server Error", "HTTP 503 Service Unavailable",
            "empty reply", "stream reset after 2 chunks", "read timeout after 0.5 s", "malformed chunk",
            "stream ended without [DONE]", "stream ended without finish_reason"} <= reasons  # fmt: skip
    truth = truths["fast"]
    assert fast["summary"]["messages"]["succeeded"] == truth["completions_served"]
    assert fast["summary"]["tokens"]["output"] == truth["completion_tokens_served"]
    assert fast["summary"]["tokens"]["input"] == truth["prompt_tokens_served"]


def test_both_send_the_same_request_with_key_and_client_header(start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.005", "--itl", "0.001", "--output-tokens", "9", "--api-key", "sk-test",
                                "--record-requests")  # fmt: skip
    bodies = {}
    for engine in ENGINES:
        reset(simulator)
        run = engine_check(engine, simulator.base_url, "--messages", "4", "--max-tokens", "7", "--api-key", "sk-test",
                           "--client-id", f"id-{engine}")  # fmt: skip
        assert run["summary"]["messages"]["succeeded"] == 4, run["summary"]  # the bearer token was accepted
        assert run["summary"]["messages"]["length_capped"] == 4
        assert simulator.stats()["served_by_client"] == {f"id-{engine}": 4}
        bodies[engine] = simulator.requests()
    assert bodies["fast"] == bodies["langchain"]
    assert bodies["fast"][0]["max_completion_tokens"] == 7 and bodies["fast"][0]["temperature"] == 0.7
    # A wrong key is refused the same way by both.
    for engine in ENGINES:
        run = engine_check(engine, simulator.base_url, "--messages", "1", "--api-key", "wrong")
        assert run["summary"]["errors"] == {"HTTP 401 Unauthorized": 1}


def test_connection_failures_have_the_same_reasons() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    # A listener whose one-place backlog is taken: the kernel drops the next SYN, so connecting hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    filler = socket.create_connection(full.getsockname(), timeout=5)
    try:
        for engine in ENGINES:
            refused = engine_check(engine, f"http://127.0.0.1:{refused_port}/v1", "--messages", "1")
            assert refused["summary"]["errors"] == {"connection error: Connection refused": 1}
            hung = engine_check(engine, f"http://127.0.0.1:{full.getsockname()[1]}/v1", "--messages", "1",
                                "--connect-timeout", "0.3")  # fmt: skip
            assert hung["summary"]["errors"] == {"connect timeout after 0.3 s": 1}
    finally:
        filler.close()
        full.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_few_users_reuse_their_connections(start_simulator, engine: str) -> None:
    simulator = start_simulator("--ttft", "0.005", "--itl", "0.001", "--output-tokens", "5")
    reset(simulator)
    run = engine_check(engine, simulator.base_url, "--messages", "60", "--users", "3")
    assert run["summary"]["messages"]["succeeded"] == 60
    stats = simulator.stats()
    assert stats["completions_served"] == 60
    # One connection per user, plus this GET /sim/stats (each urllib request opens its own), plus the reset's.
    assert stats["connections_opened"] - 2 <= 3


@pytest.mark.parametrize("engine", ENGINES)
def test_connections_outlive_typing_pauses(start_simulator, engine: str) -> None:
    """A user who types for 6 s between messages keeps its connection while the server keeps it open."""
    simulator = start_simulator("--ttft", "0.005", "--itl", "0.001", "--output-tokens", "5")
    reset(simulator)
    run = engine_check(engine, simulator.base_url, "--messages", "4", "--users", "2", "--pause", "6")
    assert run["summary"]["messages"]["succeeded"] == 4
    assert simulator.stats()["connections_opened"] - 2 <= 2  # as above: the reset and this GET open their own


@pytest.mark.parametrize("engine", ENGINES)
def test_a_connection_the_server_closed_is_not_reused(start_simulator, engine: str) -> None:
    """Like uvicorn, the server closes idle connections after 1 s: a new one, and no failure, after a pause."""
    simulator = start_simulator("--ttft", "0.005", "--itl", "0.001", "--output-tokens", "5",
                                "--keep-alive-timeout", "1")  # fmt: skip
    reset(simulator)
    run = engine_check(engine, simulator.base_url, "--messages", "4", "--users", "2", "--pause", "2")
    assert run["summary"]["messages"]["succeeded"] == 4, run["summary"]["errors"]
    assert simulator.stats()["connections_opened"] - 2 == 4


def test_fast_engine_in_a_real_run_matches_the_truth(tmp_path: Path, start_simulator) -> None:
    simulator = start_simulator("--ttft", "0.2", "--itl", "0.02", "--output-tokens", "20")
    run = replay(tmp_path, simulator.base_url, "--client-engine", "fast", users=4, seconds=5)
    assert run.returncode == 0, run.output
    truth = simulator.stats()
    report = run.summary()
    assert report["messages"]["total"] == truth["completions_served"] > 20
    assert report["tokens"]["input"] == truth["prompt_tokens_served"]
    assert report["tokens"]["output"] == truth["completion_tokens_served"]
    assert report["ttft_ms"]["p50"] == pytest.approx(truth["served_timing"]["ttft_ms_mean"], rel=0.02)
    assert report["latency_ms"]["p50"] == pytest.approx(truth["served_timing"]["e2e_ms_mean"], rel=0.02)
    # Users keep their connections: 4 of them, the one-off GET /models before the run, this GET /sim/stats.
    assert truth["connections_opened"] <= 4 + 1 + 1
    # The engine's own HTTP requests are not reported to Locust: one "chat" row per model, no other rows.
    rows = [line for line in run.output.splitlines() if line.lstrip().startswith(("chat ", "POST ", "GET "))]
    assert not any(line.lstrip().startswith("POST ") for line in rows), rows


# ---- what the simulator cannot send -------------------------------------------------------------------

CHUNK = '{"id":"c1","object":"chat.completion.chunk","created":0,"model":"m","choices":[%s]%s}'
CONTENT = '{"index":0,"delta":{"content":"%s"},"finish_reason":null}'
FINISH = '{"index":0,"delta":{},"finish_reason":"stop"}'
USAGE = ',"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}'


def sse(lines: list[str], newline: str = "\n") -> bytes:
    return "".join(line + newline for line in lines).encode()


# How a canned body is sent: in one chunked write, or until the connection closes, or chunked in
# pieces of a few bytes with pauses between them, so lines, CRLFs and events arrive torn across reads,
# or in one chunked write whose terminating chunk comes ``_LINGER_S`` later.
CHUNKED, CLOSE_DELIMITED, DRIBBLED, LINGERING = "chunked", "close", "dribbled", "lingering"
_DRIBBLE_BYTES = 7
_LINGER_S = 0.5

CANNED: dict[str, tuple[bytes, str]] = {
    # CRLF line endings, "data:" without a space, comments and an id field, one event split over two data lines.
    "crlf": (
        sse(
            [
                ": hello",
                "id: 1",
                "data:" + CHUNK % (CONTENT % "Hel", ""),
                "",
                'data: {"id":"c1","object":"chat.completion.chunk",',
                'data: "created":0,"model":"m","choices":[' + CONTENT % "lo" + "]}",
                "",
                "data: " + CHUNK % (FINISH, ""),
                "",
                "data: " + CHUNK % ("", USAGE),
                "",
                "data: [DONE]",
                "",
            ],
            "\r\n",
        ),
        CHUNKED,
    ),
    # An error event after the first content chunk, as OpenAI sends mid-stream.
    "error_event": (
        sse(
            [
                "data: " + CHUNK % (CONTENT % "Hi", ""),
                "",
                'data: {"error": {"message": "The model is overloaded req_8Xk2Qz", "type": "server_error"}}',
                "",
                "data: [DONE]",
                "",
            ]
        ),
        CHUNKED,
    ),
    # No length, not chunked: the body ends when the server closes the connection.
    "close_delimited": (
        sse(["data: " + CHUNK % (CONTENT % "Hi", ""), "", "data: " + CHUNK % (FINISH, USAGE), "", "data: [DONE]", ""]),
        CLOSE_DELIMITED,
    ),
    # Blank lines before and between events, comments, CRLF: sent a few bytes at a time. And a NaN,
    # which is not JSON but which the SDK's json.loads reads, so the fast engine must read it too.
    "dribbled": (
        sse(
            [
                "",
                ": ping",
                "",
                "data: " + CHUNK % (CONTENT % "One", ""),
                "",
                "",
                "data:" + CHUNK % (CONTENT % " two", ',"score":NaN'),
                ": ping",
                "",
                "data: " + CHUNK % (FINISH, USAGE),
                "",
                "data: [DONE]",
                "",
            ],
            "\r\n",
        ),
        DRIBBLED,
    ),
    # The whole stream, then a pause before the body's last (empty) chunk: the message ended at [DONE].
    "lingering": (
        sse(["data: " + CHUNK % (CONTENT % "Hi", ""), "", "data: " + CHUNK % (FINISH, USAGE), "", "data: [DONE]", ""]),
        LINGERING,
    ),
}


class _CannedServer(socketserver.ThreadingTCPServer):
    """Answers the n-th request with the n-th of ``CANNED``'s streams, in turn, whatever was asked."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CannedHandler)
        self.served = 0
        self.lock = threading.Lock()

    def next_case(self) -> tuple[bytes, str]:
        with self.lock:
            case = list(CANNED.values())[self.served % len(CANNED)]
            self.served += 1
            return case


class _CannedHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        assert isinstance(self.server, _CannedServer)
        buffer = b""
        while True:
            while b"\r\n\r\n" not in buffer:
                data = self.request.recv(65536)
                if not data:
                    return
                buffer += data
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), b"0"))  # fmt: skip
            while len(buffer) < length:
                buffer += self.request.recv(65536)
            buffer = buffer[length:]
            body, framing = self.server.next_case()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            if framing in (CHUNKED, LINGERING):
                self.request.sendall(head + b"%x\r\n%s\r\n" % (len(body), body))
                if framing == LINGERING:
                    time.sleep(_LINGER_S)
                self.request.sendall(b"0\r\n\r\n")
            elif framing == DRIBBLED:
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.request.sendall(head)
                for start in range(0, len(body), _DRIBBLE_BYTES):
                    piece = body[start : start + _DRIBBLE_BYTES]
                    self.request.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                    time.sleep(0.002)
                self.request.sendall(b"0\r\n\r\n")
            else:
                self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
                self.request.sendall(body)
                return


@pytest.fixture
def canned() -> Iterator[str]:
    server = _CannedServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_unusual_streams_are_read_alike(canned: str) -> None:
    runs = {engine: engine_check(engine, canned, "--messages", str(len(CANNED))) for engine in ENGINES}
    assert per_message(runs["fast"]) == per_message(runs["langchain"])
    assert [(row["error"], row["chunks"]) for row in runs["fast"]["results"]] == [
        (None, 2),  # crlf: both content chunks, usage and [DONE] read
        ("stream error: The model is overloaded req_…", 1),  # error_event: its message, request id masked
        (None, 1),  # close_delimited
        (None, 2),  # dribbled
        (None, 1),  # lingering
    ]
    for engine, run in runs.items():  # the wait for the body's last chunk after [DONE] is not the reply's time
        assert run["results"][-1]["e2e_ms"] < _LINGER_S * 1000 / 2, engine
