"""The simulator is the ground truth for every other test, so its wire format, counters and faults are checked
here byte by byte, with raw `http.client` against a real simulator process on loopback."""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest

FAST = ("--ttft", "0.01", "--itl", "0.001", "--output-tokens", "6")
TOKENS = 6
PROMPT = "Hello, world! It's me."  # Hello , world ! It ' s me . -> 9 prompt tokens


@dataclass
class Stream:
    """What a client read from a streamed body: its SSE lines in order, and the error that cut it short."""

    lines: list[str]
    error: Exception | None

    @property
    def data(self) -> list[str]:
        return [line.removeprefix("data: ") for line in self.lines if line.startswith("data: ")]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(data) for data in self.data if data not in ("[DONE]", "{not json")]

    @property
    def content(self) -> list[str]:
        return [c["choices"][0]["delta"]["content"] for c in self.chunks if c["choices"] and _is_content(c)]


def _is_content(chunk: dict[str, Any]) -> bool:
    return bool(chunk["choices"][0]["delta"].get("content"))


def read_stream(response: http.client.HTTPResponse) -> Stream:
    lines: list[str] = []
    try:
        while line := response.readline():
            if text := line.decode().rstrip("\n"):
                lines.append(text)
    except (OSError, http.client.HTTPException) as error:
        return Stream(lines, error)
    return Stream(lines, None)


class Client:
    """One keep-alive HTTP/1.1 connection to the simulator."""

    def __init__(self, origin: str, timeout: float = 5) -> None:
        parts = urlsplit(origin)
        assert parts.hostname is not None
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def chat(
        self,
        *,
        stream: bool = True,
        include_usage: bool = False,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> http.client.HTTPResponse:
        payload: dict[str, Any] = {"model": "sim-small", "messages": [{"role": "user", "content": PROMPT}], **extra}
        if stream:
            payload["stream"] = True
            if include_usage:
                payload["stream_options"] = {"include_usage": True}
        return self.send("POST", "/v1/chat/completions", payload, headers)

    def send(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        body = None if payload is None else json.dumps(payload)
        headers = {"Content-Type": "application/json", **(headers or {})}
        self.connection.request(method, path, body=body, headers=headers)
        return self.connection.getresponse()

    def json(self, method: str, path: str, payload: Any = None) -> tuple[int, Any]:
        response = self.send(method, path, payload)
        return response.status, json.loads(response.read())


@contextmanager
def client(origin: str, timeout: float = 5) -> Iterator[Client]:
    c = Client(origin, timeout)
    with closing(c.connection):
        yield c


def fault_free(stats: dict[str, Any]) -> bool:
    """A faulted request adds nothing to the served counters."""
    return (
        stats["completions_served"]
        == stats["prompt_tokens_served"]
        == stats["completion_tokens_served"]
        == stats["content_chunks_served"]
        == 0
        and stats["served_by_model"] == {}
    )


@pytest.mark.parametrize("include_usage", [False, True])
def test_stream_has_role_content_finish_usage_and_done(start_simulator, include_usage: bool) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        response = c.chat(include_usage=include_usage)
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        received = read_stream(response)

    assert received.error is None
    assert received.data[-1] == "[DONE]"
    chunks = received.chunks
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert received.content == ["lorem ", "ipsum ", "dolor ", "sit ", "amet ", "consectetur "]
    assert all(_is_content(chunk) for chunk in chunks[1 : 1 + TOKENS])
    finish = chunks[1 + TOKENS]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    if include_usage:
        assert len(chunks) == TOKENS + 3
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {"prompt_tokens": 9, "completion_tokens": TOKENS, "total_tokens": 9 + TOKENS}
    else:
        assert len(chunks) == TOKENS + 2
        assert all("usage" not in chunk for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    stats = simulator.stats()
    assert stats["chat_requests"] == stats["completions_served"] == 1
    assert stats["completion_tokens_served"] == stats["content_chunks_served"] == TOKENS
    assert stats["prompt_tokens_served"] == 9
    assert stats["served_by_model"] == {"sim-small": 1}
    assert stats["faults"] == {}
    assert stats["partial_content_chunks"] == 0


def test_prompt_tokens_are_words_and_punctuation_of_all_messages(start_simulator) -> None:
    simulator = start_simulator(*FAST)
    messages = [
        {"role": "system", "content": "Be brief."},  # 3
        {"role": "user", "content": "What's 2+2?"},  # What ' s 2 + 2 ? -> 7
        {"role": "assistant", "content": None},  # 0
        {"role": "user", "content": "  naïve   café  "},  # 2
    ]
    with client(simulator.origin) as c:
        received = read_stream(c.chat(include_usage=True, messages=messages))
    assert received.chunks[-1]["usage"]["prompt_tokens"] == 12
    assert simulator.stats()["prompt_tokens_served"] == 12


@pytest.mark.parametrize(
    ("limit", "expected_tokens", "expected_reason"),
    [({"max_tokens": 4}, 4, "length"), ({"max_completion_tokens": 2}, 2, "length"), ({"max_tokens": 6}, 6, "stop")],
)
def test_max_tokens_shortens_the_reply(
    start_simulator, limit: dict[str, int], expected_tokens: int, expected_reason: str
) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        received = read_stream(c.chat(include_usage=True, **limit))
    assert len(received.content) == expected_tokens
    assert received.chunks[-2]["choices"][0]["finish_reason"] == expected_reason
    assert received.chunks[-1]["usage"]["completion_tokens"] == expected_tokens
    assert simulator.stats()["content_chunks_served"] == expected_tokens


def test_non_streamed_reply(start_simulator) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        status, body = c.json("POST", "/v1/chat/completions", {"model": "sim-large", "messages": [{"content": PROMPT}]})
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "lorem ipsum dolor sit amet consectetur "}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": TOKENS, "total_tokens": 9 + TOKENS}
    stats = simulator.stats()
    assert stats["completions_served"] == 1
    assert stats["served_by_model"] == {"sim-large": 1}


def test_unknown_route_is_404(start_simulator) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        status, body = c.json("GET", "/v2/nothing")
    assert status == 404
    assert body["error"]["code"] == "not_found"
    stats = simulator.stats()
    assert stats["chat_requests"] == 0
    assert stats["faults"] == {}


def test_keep_alive_serves_many_requests_on_one_connection(start_simulator) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        assert read_stream(c.chat()).data[-1] == "[DONE]"
        assert c.json("POST", "/v1/chat/completions", {"model": "sim-small", "messages": []})[0] == 200
        status, stats = c.json("GET", "/sim/stats")  # on the same connection, so it opens none
    assert status == 200
    assert stats["connections_opened"] == 1
    assert stats["completions_served"] == 2


STATUS_FAULTS = [
    ("--fault-429", "http_429", 429, "rate_limit_exceeded", "rate_limit_exceeded"),
    ("--fault-500", "http_500", 500, "server_error", None),
    ("--fault-503", "http_503", 503, "server_error", None),
]


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(("flag", "name", "status", "kind", "code"), STATUS_FAULTS)
def test_http_error_faults(
    start_simulator, stream: bool, flag: str, name: str, status: int, kind: str, code: str | None
) -> None:
    simulator = start_simulator(*FAST, flag, "1")
    with client(simulator.origin) as c:
        response = c.chat(stream=stream)
        body = json.loads(response.read())
        assert response.status == status
        assert response.getheader("Content-Type") == "application/json"
        assert response.getheader("Retry-After") == ("1" if status == 429 else None)
        assert body["error"]["type"] == kind
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        stats = c.json("GET", "/sim/stats")[1]  # the connection survives the error
    assert stats["faults"] == {name: 1}
    assert stats["chat_requests"] == 1
    assert stats["rejected"] == {}
    assert fault_free(stats)


def test_wrong_api_key_is_401_and_counted_as_fault(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--api-key", "sk-right")
    with client(simulator.origin) as c:
        response = c.chat(headers={"Authorization": "Bearer sk-wrong"})
        assert response.status == 401
        assert json.loads(response.read())["error"]["code"] == "invalid_api_key"
        assert read_stream(c.chat(headers={"Authorization": "Bearer sk-right"})).data[-1] == "[DONE]"
    stats = simulator.stats()
    assert stats["rejected"] == {"401": 1}
    assert stats["faults"] == {"http_401": 1}
    assert stats["completions_served"] == 1


def test_reset_after_n_chunks(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-reset", "1", "--fault-after-chunks", "2")
    with client(simulator.origin) as c:
        response = c.chat(include_usage=True)
        assert response.status == 200
        received = read_stream(response)
    assert isinstance(received.error, ConnectionResetError | http.client.IncompleteRead)
    assert received.content == ["lorem ", "ipsum "]
    assert "[DONE]" not in received.data
    stats = simulator.stats()
    assert stats["faults"] == {"reset": 1}
    assert stats["partial_content_chunks"] == 2
    assert fault_free(stats)


def test_stall_after_n_chunks_keeps_the_connection_silent(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-stall", "1")
    with client(simulator.origin) as c:
        response = c.chat()
        assert response.status == 200
        assert c.connection.sock is not None
        c.connection.sock.settimeout(0.3)  # the stall shows as silence: a short timeout ends the wait
        started = time.monotonic()
        received = read_stream(response)
        assert time.monotonic() - started < 2
    assert isinstance(received.error, TimeoutError)
    assert received.content == ["lorem ", "ipsum ", "dolor "]  # --fault-after-chunks defaults to 3
    stats = simulator.stats()
    assert stats["faults"] == {"stall": 1}
    assert stats["partial_content_chunks"] == 3
    assert fault_free(stats)
    with client(simulator.origin) as c:  # the stalled connection is closed; the server carries on
        assert c.json("POST", "/sim/config", {"fault_stall": 0})[0] == 200
        assert read_stream(c.chat()).data[-1] == "[DONE]"


def test_malformed_event_then_a_proper_end(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-malformed", "1", "--fault-after-chunks", "4")
    with client(simulator.origin) as c:
        received = read_stream(c.chat(include_usage=True))
        stats = c.json("GET", "/sim/stats")[1]
    assert received.error is None
    assert received.data[-2:] == ["{not json", "[DONE]"]
    assert len(received.data) == 1 + 4 + 2  # role, 4 tokens, the bad event, [DONE]: no finish, no usage
    assert len(received.content) == 4
    assert stats["faults"] == {"malformed": 1}
    assert stats["partial_content_chunks"] == 4
    assert fault_free(stats)


def test_breaking_fault_after_more_chunks_than_tokens_strikes_after_the_last(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-malformed", "1", "--fault-after-chunks", "100")
    with client(simulator.origin) as c:
        received = read_stream(c.chat())
    assert len(received.content) == TOKENS
    assert received.data[-2:] == ["{not json", "[DONE]"]
    assert simulator.stats()["partial_content_chunks"] == TOKENS


def test_no_done(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-no-done", "1")
    with client(simulator.origin) as c:
        received = read_stream(c.chat(include_usage=True))
        stats = c.json("GET", "/sim/stats")[1]  # the body ended properly, so the connection is reusable
    assert received.error is None
    assert "[DONE]" not in received.data
    assert len(received.content) == TOKENS
    assert received.chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert received.chunks[-1]["usage"]["completion_tokens"] == TOKENS
    assert stats["faults"] == {"no_done": 1}
    assert stats["partial_content_chunks"] == TOKENS
    assert fault_free(stats)


def test_no_finish_reason(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-no-finish-reason", "1")
    with client(simulator.origin) as c:
        received = read_stream(c.chat(include_usage=True))
    assert received.error is None
    assert received.data[-1] == "[DONE]"
    assert len(received.content) == TOKENS
    assert all(c["choices"][0]["finish_reason"] is None for c in received.chunks if c["choices"])
    assert received.chunks[-1]["usage"]["completion_tokens"] == TOKENS
    stats = simulator.stats()
    assert stats["faults"] == {"no_finish_reason": 1}
    assert fault_free(stats)


def test_empty_stream(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-empty-stream", "1")
    with client(simulator.origin) as c:
        response = c.chat()
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        assert response.read() == b""
        stats = c.json("GET", "/sim/stats")[1]
    assert stats["faults"] == {"empty_stream": 1}
    assert stats["partial_content_chunks"] == 0
    assert fault_free(stats)


@pytest.mark.parametrize("stream", [True, False])
def test_slow_first_byte_delays_the_status_line(start_simulator, stream: bool) -> None:
    simulator = start_simulator(*FAST, "--fault-slow-first-byte", "1", "--slow-first-byte-delay", "0.3")
    with client(simulator.origin) as c:
        started = time.monotonic()
        response = c.chat(stream=stream)
        assert time.monotonic() - started >= 0.3
        assert response.status == 200
        if stream:
            assert len(read_stream(response).content) == TOKENS
        else:
            assert json.loads(response.read())["choices"][0]["finish_reason"] == "stop"
    stats = simulator.stats()
    assert stats["faults"] == {"slow_first_byte": 1}
    assert stats["partial_content_chunks"] == (TOKENS if stream else 0)
    assert fault_free(stats)


def test_slow_first_byte_counts_even_when_the_client_gives_up(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-slow-first-byte", "1", "--slow-first-byte-delay", "5")
    with client(simulator.origin, timeout=0.2) as c, pytest.raises(TimeoutError):
        c.chat()
    stats = simulator.stats()
    assert stats["faults"] == {"slow_first_byte": 1}
    assert fault_free(stats)


def test_sse_ping_comes_before_every_content_chunk_and_is_no_fault(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--sse-ping")
    with client(simulator.origin) as c:
        received = read_stream(c.chat())
    assert received.error is None
    assert received.lines.count(": ping") == TOKENS
    for index, line in enumerate(received.lines):
        is_content = line.startswith("data: {") and _is_content(json.loads(line.removeprefix("data: ")))
        assert is_content == (index > 0 and received.lines[index - 1] == ": ping")
    stats = simulator.stats()
    assert stats["completions_served"] == 1
    assert stats["content_chunks_served"] == TOKENS
    assert stats["faults"] == {}


def test_stream_faults_spare_non_streamed_requests(start_simulator) -> None:
    stream_only = ("--fault-reset", "--fault-stall", "--fault-malformed", "--fault-no-done", "--fault-empty-stream")
    simulator = start_simulator(*FAST, *(arg for flag in stream_only for arg in (flag, "1")))
    with client(simulator.origin) as c:
        assert c.json("POST", "/v1/chat/completions", {"model": "sim-small", "messages": []})[0] == 200
    stats = simulator.stats()
    assert stats["completions_served"] == 1
    assert stats["faults"] == {}


def test_one_fault_per_request_in_a_fixed_order(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--fault-503", "1", "--fault-429", "1", "--fault-reset", "1")
    with client(simulator.origin) as c:
        for _ in range(3):
            response = c.chat()
            response.read()
            assert response.status == 429
    assert simulator.stats()["faults"] == {"http_429": 3}


def test_seeded_draws_repeat_after_reset(start_simulator) -> None:
    simulator = start_simulator(*FAST, "--seed", "7", "--fault-500", "0.5")
    draws = random.Random(7)
    expected = [500 if draws.random() < 0.5 else 200 for _ in range(16)]
    assert 0 < expected.count(500) < 16
    with client(simulator.origin) as c:
        for _ in range(2):
            statuses = []
            for _ in range(16):
                response = c.chat(stream=False)
                response.read()
                statuses.append(response.status)
            assert statuses == expected
            stats = c.json("GET", "/sim/stats")[1]
            assert stats["faults"] == {"http_500": expected.count(500)}
            assert stats["completions_served"] == expected.count(200)
            assert c.json("POST", "/sim/reset")[0] == 200


def test_runtime_config_survives_reset(start_simulator) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        status, config = c.json("POST", "/sim/config", {"fault_503": 1, "fault_after_chunks": 1, "sse_ping": True})
        assert status == 200
        assert config["fault_503"] == 1.0
        assert config["fault_after_chunks"] == 1
        assert config["sse_ping"] is True
        assert config["fault_429"] == 0.0
        assert c.json("POST", "/sim/reset")[0] == 200
        response = c.chat()
        response.read()
        assert response.status == 503
        status, config = c.json("POST", "/sim/config", {"fault_503": 0, "fault_stall": 0.0})
        assert config["fault_503"] == 0.0
        assert config["sse_ping"] is True
        assert ": ping" in read_stream(c.chat()).lines
        stats = c.json("GET", "/sim/stats")[1]
    assert stats["faults"] == {"http_503": 1}
    assert stats["completions_served"] == 1


@pytest.mark.parametrize(
    "payload",
    [{"fault_500": 1.5}, {"fault_500": True}, {"fault_500": "1"}, {"ttft": 0}, {"sse_ping": 1}, [1], {"seed": 1.5}],
)
def test_bad_runtime_config_is_refused(start_simulator, payload: Any) -> None:
    simulator = start_simulator(*FAST)
    with client(simulator.origin) as c:
        status, body = c.json("POST", "/sim/config", payload)
        assert status == 400
        assert body["error"]["message"].startswith("bad simulator config")
        assert c.json("POST", "/sim/config", {})[1]["fault_500"] == 0.0


def test_bad_fault_flag_is_refused() -> None:
    command = [sys.executable, "-m", "bagstress_locust.simulator", "--port", "0", "--fault-500", "1.5"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert completed.returncode == 2
    assert "fault_500" in completed.stderr
