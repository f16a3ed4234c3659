"""A simulated OpenAI-compatible chat server with exact, known timing — the ground truth for every test.

Run it on its own::

    python -m bagstress_locust.simulator --port 8000 --ttft 0.2 --itl 0.02 --output-tokens 40

It serves ``GET /v1/models`` and ``POST /v1/chat/completions`` (streamed as SSE and not streamed)
the way real OpenAI-compatible servers do: a role chunk, one ``data:`` event per token, a
``finish_reason`` chunk, a usage chunk when ``stream_options.include_usage`` is true, then
``data: [DONE]``. The first content token leaves ``--ttft`` seconds after the request arrived and
each following token ``--itl`` seconds after the previous one.

Token counts are deterministic so that tests can compare a client's figures with the truth:

* prompt tokens: the number of words and punctuation marks (``\\w+|[^\\w\\s]``) in all message
  contents of the request;
* completion tokens: ``--output-tokens``, or the request's ``max_tokens`` /
  ``max_completion_tokens`` if smaller (then ``finish_reason`` is ``"length"``); every token is
  one content chunk.

Faults can be injected so that tests know exactly which failures a client met. Each is a probability
per chat request (0..1, default 0), drawn with one ``random.Random`` (``--seed`` makes the draws
repeatable) in the order below; the first hit wins, so a request gets at most one fault:

* ``http_429`` (``--fault-429``): ``429`` with ``Retry-After: 1`` and an OpenAI error body of type
  and code ``rate_limit_exceeded``;
* ``http_500`` (``--fault-500``), ``http_503`` (``--fault-503``): OpenAI's ``server_error`` bodies;
* ``slow_first_byte`` (``--fault-slow-first-byte``): the whole response, status line included,
  starts ``--slow-first-byte-delay`` seconds (default 5) late;
* ``empty_stream`` (``--fault-empty-stream``): ``200`` ``text/event-stream`` with an empty chunked
  body, as llama.cpp's server answers a prompt longer than its context;
* ``reset`` (``--fault-reset``): after ``--fault-after-chunks`` content chunks (default 3, at most
  all of them), in the slot of the next one, the TCP connection is reset (RST);
* ``stall`` (``--fault-stall``): after those chunks nothing more is sent, but the connection stays
  open until the client closes it;
* ``malformed`` (``--fault-malformed``): after those chunks one ``data: {not json`` event, then
  ``data: [DONE]`` and a proper end of the body;
* ``no_done`` (``--fault-no-done``): the whole stream, but no ``data: [DONE]``;
* ``no_finish_reason`` (``--fault-no-finish-reason``): the whole stream without the
  ``finish_reason`` chunk.

The three HTTP errors and ``slow_first_byte`` hit streamed and non-streamed requests, the rest only
streamed ones. ``--api-key`` adds one more: a request without that bearer token gets ``401``
(``invalid_api_key``, on every ``/v1`` route). ``--sse-ping`` is no fault: it puts an SSE comment
``: ping`` before every content chunk, as servers send keep-alives, and the stream counts as served.
``--keep-alive-timeout S`` closes a connection that has been idle for ``S`` seconds between
requests, as uvicorn (vLLM, 5 s by default) and llama.cpp's server do; by default it stays open.
``POST /sim/config`` with a JSON object of ``SimulatorConfig`` fault fields (``fault_*``,
``fault_after_chunks``, ``slow_first_byte_delay``, ``sse_ping``, ``seed``) changes them at runtime;
sending ``seed`` restarts the draws.

It counts what it received and served; ``GET /sim/stats`` returns the counters as JSON, ``GET
/sim/requests`` the recorded chat requests (``--record-requests``), and ``POST /sim/reset`` zeroes
both and restarts the seeded draws (the configuration stays). ``chat_requests`` counts well-formed
chat requests, faulted or not; ``completions_served``, ``prompt_tokens_served``,
``completion_tokens_served``, ``content_chunks_served``, ``served_by_model`` and
``served_by_client`` (by the ``X-Bagstress-Client`` request header, which bagstress-locust sets to
the Locust worker's id) count only completions without a fault, once their last byte is written.
``faults`` counts each fault by the names above (plus ``http_401``, which also counts in
``rejected["401"]``) when it takes effect: at the response for the HTTP errors and ``empty_stream``,
on arrival for ``slow_first_byte``, at the break for ``reset``/``stall``/``malformed`` and at the
end of the stream for the others. A client that leaves before then is counted nowhere, as for a
fault-free stream. ``partial_content_chunks`` counts the content chunks written on faulted streams:
exactly ``--fault-after-chunks`` (or all tokens, if fewer) for each break, all tokens for the
others.

The server is asyncio on a single thread with no third-party code on the hot path, and with every
fault probability at 0 a request pays one truth test for them, so one core serves far more than one
load-generator process can send.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import random
import re
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimulatorConfig", "SimulatorStats", "count_prompt_tokens", "main", "serve"]

# Load generators name themselves in this header (a Locust worker's id), so tests can tell who was served.
CLIENT_HEADER = "x-bagstress-client"
_WORD = re.compile(r"\w+|[^\w\s]")
_VOCABULARY = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_MAX_HEADER_BYTES = 64 * 1024

# Fault name (its key in ``SimulatorStats.faults``) -> (``SimulatorConfig`` field, --help text), in the
# order the faults are drawn: the first hit wins.
_FAULTS = {
    "http_429": ("fault_429", "answer 429 rate_limit_exceeded with Retry-After: 1"),
    "http_500": ("fault_500", "answer 500 server_error"),
    "http_503": ("fault_503", "answer 503 server_error"),
    "slow_first_byte": ("fault_slow_first_byte", "start the response --slow-first-byte-delay seconds late"),
    "empty_stream": ("fault_empty_stream", "stream an empty 200 body, like llama.cpp on an over-long prompt"),
    "reset": ("fault_reset", "reset the connection after --fault-after-chunks content chunks"),
    "stall": ("fault_stall", "send nothing more after --fault-after-chunks content chunks"),
    "malformed": ("fault_malformed", "send 'data: {not json' and [DONE] after --fault-after-chunks content chunks"),
    "no_done": ("fault_no_done", "end the stream without data: [DONE]"),
    "no_finish_reason": ("fault_no_finish_reason", "leave out the finish_reason chunk"),
}
# Faults that non-streamed requests can get too; the others only make sense in a stream.
_WHOLE_RESPONSE_FAULTS = frozenset({"http_429", "http_500", "http_503", "slow_first_byte"})
# Faults that cut a stream short after ``fault_after_chunks`` content chunks.
_BREAKING_FAULTS = frozenset({"reset", "stall", "malformed"})
# Fault name -> (status, message, error type, error code, extra header lines), like OpenAI's answers.
_STATUS_FAULTS: dict[str, tuple[int, str, str, str | None, str]] = {
    "http_429": (
        429,
        "Rate limit reached for requests. Please try again in 1s.",
        "rate_limit_exceeded",
        "rate_limit_exceeded",
        "Retry-After: 1\r\n",
    ),
    "http_500": (
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
        "",
    ),
    "http_503": (503, "The server is overloaded or not ready yet.", "server_error", None, ""),
}
# ``POST /sim/config`` fields and the JSON types each accepts (bool is never taken for a number).
_RUNTIME_FIELDS: dict[str, tuple[type, ...]] = {
    **{config_field: (int, float) for config_field, _ in _FAULTS.values()},
    "fault_after_chunks": (int,),
    "slow_first_byte_delay": (int, float),
    "sse_ping": (bool,),
    "seed": (int, type(None)),
}


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The simulator's documented prompt-token rule: words and punctuation marks in all contents."""
    return sum(len(_WORD.findall(str(message.get("content") or ""))) for message in messages)


@dataclass
class SimulatorConfig:
    """Timing and behaviour of the simulated server; the truth that clients are measured against."""

    ttft: float = 0.2
    itl: float = 0.02
    output_tokens: int = 40
    models: tuple[str, ...] = ("sim-small", "sim-medium", "sim-large")
    send_usage: bool = True
    api_key: str | None = None
    record_requests: bool = False
    seed: int | None = None
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_503: float = 0.0
    fault_slow_first_byte: float = 0.0
    fault_empty_stream: float = 0.0
    fault_reset: float = 0.0
    fault_stall: float = 0.0
    fault_malformed: float = 0.0
    fault_no_done: float = 0.0
    fault_no_finish_reason: float = 0.0
    fault_after_chunks: int = 3
    slow_first_byte_delay: float = 5.0
    sse_ping: bool = False
    keep_alive_timeout: float | None = None

    def __post_init__(self) -> None:
        for config_field, _ in _FAULTS.values():
            if not 0 <= getattr(self, config_field) <= 1:
                raise ValueError(f"{config_field} must be a probability in 0..1, not {getattr(self, config_field)}")
        if self.fault_after_chunks < 0:
            raise ValueError(f"fault_after_chunks must not be negative, not {self.fault_after_chunks}")
        if self.slow_first_byte_delay < 0:
            raise ValueError(f"slow_first_byte_delay must not be negative, not {self.slow_first_byte_delay}")


@dataclass
class SimulatorStats:
    """What the simulator received, served and injected; see the module docstring for when each counts."""

    connections_opened: int = 0
    chat_requests: int = 0
    completions_served: int = 0
    prompt_tokens_served: int = 0
    completion_tokens_served: int = 0
    content_chunks_served: int = 0
    partial_content_chunks: int = 0
    models_requests: int = 0
    # When the served streams' first and last tokens really left, measured from the request's arrival:
    # the event loop wakes up to 1 ms after the scheduled time, so this, not --ttft, is the exact truth.
    streams_timed: int = 0
    ttft_s_sum: float = 0.0
    e2e_s_sum: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)
    served_by_model: Counter[str] = field(default_factory=Counter)
    served_by_client: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections_opened": self.connections_opened,
            "chat_requests": self.chat_requests,
            "completions_served": self.completions_served,
            "prompt_tokens_served": self.prompt_tokens_served,
            "completion_tokens_served": self.completion_tokens_served,
            "content_chunks_served": self.content_chunks_served,
            "partial_content_chunks": self.partial_content_chunks,
            "models_requests": self.models_requests,
            "rejected": dict(self.rejected),
            "served_by_model": dict(self.served_by_model),
            "served_by_client": dict(self.served_by_client),
            "faults": dict(self.faults),
            "served_timing": {
                "streams": self.streams_timed,
                "ttft_ms_mean": self.ttft_s_sum / self.streams_timed * 1000 if self.streams_timed else None,
                "e2e_ms_mean": self.e2e_s_sum / self.streams_timed * 1000 if self.streams_timed else None,
            },
        }


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order, one at a time."""

    def __init__(self, server: _Simulator) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.stats.connections_opened += 1
        self._wait_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stop_waiting_idle()

    def _wait_idle(self) -> None:
        """With --keep-alive-timeout, close the connection if no request starts in time."""
        timeout = self._server.config.keep_alive_timeout
        if timeout is not None and self._idle_timer is None:
            self._idle_timer = asyncio.get_running_loop().call_later(timeout, self._close)

    def _stop_waiting_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.open:
            assert self._transport is not None
            self._transport.write(data)

    def reset(self) -> None:
        """Abort with a TCP RST (linger 0) as a crashed server or proxy would; anything still unsent is lost."""
        if self._transport is not None:
            linger = struct.pack("ii", 1, 0)
            self._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self._transport.abort()

    def finish(self) -> None:
        """The current response is complete; serve the next pipelined request, if any."""
        self._busy = False
        self._next_request()
        if not self._busy:
            self._wait_idle()

    def _next_request(self) -> None:
        if self._busy or not self.open:
            return
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEADER_BYTES:
                self._close()
            return
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        if len(self._buffer) < head_end + 4 + length:
            return
        body = bytes(self._buffer[head_end + 4 : head_end + 4 + length])
        del self._buffer[: head_end + 4 + length]
        parts = request_line.split(" ")
        if len(parts) != 3:
            self._close()
            return
        self._busy = True
        self._stop_waiting_idle()
        self._server.handle(self, parts[0], parts[1].split("?", 1)[0], headers, body)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.stats = SimulatorStats()
        self.random = random.Random(config.seed)
        self._loop = asyncio.get_running_loop()
        self.configure(config)

    def configure(self, config: SimulatorConfig) -> None:
        """Adopt ``config``; only the faults it can inject are drawn, and none at all when every probability is 0."""
        self.config = config
        active = tuple((name, p) for name, (config_field, _) in _FAULTS.items() if (p := getattr(config, config_field)))
        self._stream_faults = active
        self._whole_faults = tuple(fault for fault in active if fault[0] in _WHOLE_RESPONSE_FAULTS)

    def _draw_fault(self, candidates: tuple[tuple[str, float], ...]) -> str | None:
        for name, probability in candidates:
            if self.random.random() < probability:
                return name
        return None

    def handle(self, conn: _HttpConnection, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        route = (method, path.rstrip("/"))
        if route == ("GET", "/sim/stats"):
            return self._send_json(conn, 200, self.stats.as_dict())
        if route == ("GET", "/sim/requests"):
            return self._send_json(conn, 200, {"requests": self.stats.requests})
        if route == ("POST", "/sim/reset"):
            self.stats = SimulatorStats(connections_opened=int(conn.open))
            self.random.seed(self.config.seed)
            return self._send_json(conn, 200, {"reset": True})
        if route == ("POST", "/sim/config"):
            return self._reconfigure(conn, body)
        if path.rstrip("/") not in ("/v1/models", "/v1/chat/completions"):
            return self._send_error(conn, 404, f"no route for {path}", "not_found")
        if self.config.api_key and headers.get("authorization") != f"Bearer {self.config.api_key}":
            self.stats.rejected["401"] += 1
            self.stats.faults["http_401"] += 1
            return self._send_error(conn, 401, "Incorrect API key provided.", "invalid_api_key")
        if route == ("GET", "/v1/models"):
            self.stats.models_requests += 1
            models = [{"id": m, "object": "model", "created": 0, "owned_by": "bagstress"} for m in self.config.models]
            return self._send_json(conn, 200, {"object": "list", "data": models})
        if route != ("POST", "/v1/chat/completions"):
            return self._send_error(conn, 405, f"{method} is not allowed on {path}", "method_not_allowed")
        try:
            request = json.loads(body)
            messages = request["messages"]
            model = str(request["model"])
        except (ValueError, KeyError, TypeError) as error:
            self.stats.rejected["400"] += 1
            return self._send_error(conn, 400, f"malformed chat request: {error}", "invalid_request_error")
        self.stats.chat_requests += 1
        if self.config.record_requests:
            self.stats.requests.append(request)
        stream = bool(request.get("stream"))
        candidates = self._stream_faults if stream else self._whole_faults
        fault = None
        late = 0.0
        if candidates:
            fault = self._draw_fault(candidates)
            if fault in _STATUS_FAULTS:
                return self._send_status_fault(conn, fault)
            if fault == "slow_first_byte":
                self.stats.faults[fault] += 1  # its silence starts now
                late = self.config.slow_first_byte_delay
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        completion = _Completion(
            model=model,
            prompt_tokens=count_prompt_tokens(messages),
            completion_tokens=min(self.config.output_tokens, limit) if limit else self.config.output_tokens,
            finish_reason="length" if limit and limit < self.config.output_tokens else "stop",
            client=headers.get(CLIENT_HEADER),
        )
        if stream:
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            stream_writer = _Stream(self, conn, completion, include_usage and self.config.send_usage, fault)
            if late:
                self._loop.call_later(late, stream_writer.start)
            else:
                stream_writer.start()
        else:
            delay = late + self.config.ttft + max(completion.completion_tokens - 1, 0) * self.config.itl
            self._loop.call_later(delay, self._send_whole, conn, completion, fault)

    def served(self, completion: _Completion) -> None:
        self.stats.completions_served += 1
        self.stats.prompt_tokens_served += completion.prompt_tokens
        self.stats.completion_tokens_served += completion.completion_tokens
        self.stats.content_chunks_served += completion.completion_tokens
        self.stats.served_by_model[completion.model] += 1
        if completion.client:
            self.stats.served_by_client[completion.client] += 1

    def _reconfigure(self, conn: _HttpConnection, body: bytes) -> None:
        """``POST /sim/config``: change fault fields at runtime; answers with all of them as they now are."""
        try:
            changes = json.loads(body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            for name, value in changes.items():
                accepted = _RUNTIME_FIELDS.get(name)
                if accepted is None:
                    raise ValueError(f"{name!r} cannot be changed at runtime")
                if not isinstance(value, accepted) or isinstance(value, bool) != (bool in accepted):
                    raise ValueError(f"{name} cannot be {value!r}")
                if float in accepted:
                    changes[name] = float(value)  # type: ignore[arg-type]  # an int or float, checked above
            self.configure(dataclasses.replace(self.config, **changes))
        except ValueError as error:
            return self._send_error(conn, 400, f"bad simulator config: {error}", "invalid_request_error")
        if "seed" in changes:
            self.random.seed(self.config.seed)
        self._send_json(conn, 200, {name: getattr(self.config, name) for name in _RUNTIME_FIELDS})

    def _send_status_fault(self, conn: _HttpConnection, fault: str) -> None:
        status, message, kind, code, headers = _STATUS_FAULTS[fault]
        self.stats.faults[fault] += 1
        self._send_json(conn, status, {"error": {"message": message, "type": kind, "code": code}}, headers)

    def _send_whole(self, conn: _HttpConnection, completion: _Completion, fault: str | None) -> None:
        if not conn.open:
            return
        payload = {
            "id": completion.id,
            "object": "chat.completion",
            "created": completion.created,
            "model": completion.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(completion.tokens())},
                    "finish_reason": completion.finish_reason,
                }
            ],
        }
        if self.config.send_usage:
            payload["usage"] = completion.usage()
        self._send_json(conn, 200, payload)
        if fault is None:
            self.served(completion)

    def _send_json(self, conn: _HttpConnection, status: int, payload: dict[str, Any], headers: str = "") -> None:
        body = json.dumps(payload).encode()
        conn.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        conn.finish()

    def _send_error(self, conn: _HttpConnection, status: int, message: str, code: str) -> None:
        self._send_json(conn, status, {"error": {"message": message, "type": code, "code": code}})


class _Completion:
    __slots__ = ("client", "completion_tokens", "created", "finish_reason", "id", "model", "prompt_tokens")

    _next_id = 0

    def __init__(
        self, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str, client: str | None = None
    ) -> None:
        self.client = client
        _Completion._next_id += 1
        self.id = f"chatcmpl-sim{_Completion._next_id}"
        self.created = int(time.time())
        self.model = model
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.finish_reason = finish_reason

    def tokens(self) -> list[str]:
        return [_VOCABULARY[i % len(_VOCABULARY)] + " " for i in range(self.completion_tokens)]

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        event = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return _sse(json.dumps(event))

    def usage_chunk(self) -> bytes:
        """The extra last event that ``stream_options.include_usage`` asks for: no choices, only usage."""
        event = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        }
        return _sse(json.dumps(event))


def _chunk(event: bytes) -> bytes:
    """One SSE event framed as one HTTP chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _sse(data: str) -> bytes:
    return _chunk(f"data: {data}\n\n".encode())


_PING = _chunk(b": ping\n\n")
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


class _Stream:
    """Writes one streamed completion on its schedule: first token at ``ttft``, then one every ``itl``."""

    def __init__(
        self, server: _Simulator, conn: _HttpConnection, completion: _Completion, include_usage: bool, fault: str | None
    ) -> None:
        self._server = server
        self._conn = conn
        self._completion = completion
        self._include_usage = include_usage
        self._fault = fault
        self._ping = server.config.sse_ping
        self._tokens = completion.tokens()
        self._sent = 0
        # A breaking fault strikes in the slot of the content chunk after this many; -1 never matches.
        self._break_at = min(server.config.fault_after_chunks, len(self._tokens)) if fault in _BREAKING_FAULTS else -1
        self._loop = server._loop

    def start(self) -> None:
        if self._fault == "empty_stream":
            self._conn.write(_STREAM_HEAD + _LAST_CHUNK)
            self._server.stats.faults["empty_stream"] += 1
            self._conn.finish()
            return
        self._conn.write(_STREAM_HEAD)
        self._arrived_at = self._loop.time()
        self._first_token_at = self._arrived_at + self._server.config.ttft
        self._loop.call_at(self._first_token_at, self._send_next)

    def _send_next(self) -> None:
        if not self._conn.open:
            return
        completion = self._completion
        out = bytearray()
        if self._sent == 0:
            self._first_sent_at = self._loop.time()
            out += completion.chunk({"role": "assistant", "content": ""})
        if self._sent == self._break_at:
            self._break(bytes(out))
            return
        if self._sent < len(self._tokens):
            if self._ping:
                out += _PING
            out += completion.chunk({"content": self._tokens[self._sent]})
            self._sent += 1
        if self._sent < len(self._tokens) or self._sent == self._break_at:
            self._conn.write(bytes(out))
            self._loop.call_at(self._first_token_at + self._sent * self._server.config.itl, self._send_next)
            return
        if self._fault != "no_finish_reason":
            out += completion.chunk({}, completion.finish_reason)
        if self._include_usage:
            out += completion.usage_chunk()
        if self._fault != "no_done":
            out += _sse("[DONE]")
        self._conn.write(bytes(out) + _LAST_CHUNK)
        if self._fault is None:
            self._server.served(completion)
            stats = self._server.stats
            stats.streams_timed += 1
            stats.ttft_s_sum += self._first_sent_at - self._arrived_at
            stats.e2e_s_sum += self._loop.time() - self._arrived_at
        else:
            self._server.stats.partial_content_chunks += self._sent
            if self._fault != "slow_first_byte":  # that one was counted when its silence began
                self._server.stats.faults[self._fault] += 1
        self._conn.finish()

    def _break(self, out: bytes) -> None:
        """Cut the stream short as the fault says, after writing what was due before it (the role chunk, if any)."""
        assert self._fault is not None
        self._server.stats.faults[self._fault] += 1
        self._server.stats.partial_content_chunks += self._sent
        if self._fault == "malformed":
            self._conn.write(out + _sse("{not json") + _sse("[DONE]") + _LAST_CHUNK)
            self._conn.finish()
            return
        self._conn.write(out)
        if self._fault == "reset":
            self._conn.reset()
        # A stall sends nothing more: the connection stays open, busy and silent until the client closes it.


async def serve(config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0) -> None:
    """Serve until cancelled; prints the base URL as the first line on stdout so a parent can find the port."""
    loop = asyncio.get_running_loop()
    simulator = _Simulator(config)
    server = await loop.create_server(lambda: _HttpConnection(simulator), host, port, backlog=2048)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"bagstress simulator listening on http://{host}:{bound_port}/v1", flush=True)
    async with server:
        await server.serve_forever()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bagstress_locust.simulator",
        description="Simulated OpenAI-compatible chat server with exact streaming timing.",
    )
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to bind; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--ttft", type=float, default=defaults.ttft, help="seconds to the first token (default: %(default)s)"
    )
    parser.add_argument("--itl", type=float, default=defaults.itl, help="seconds between tokens (default: %(default)s)")
    parser.add_argument(
        "--output-tokens", type=int, default=defaults.output_tokens, help="tokens per reply (default: %(default)s)"
    )
    parser.add_argument(
        "--models", default=",".join(defaults.models), help="comma-separated model ids (default: %(default)s)"
    )
    parser.add_argument("--no-usage", action="store_true", help="never send usage, like llama.cpp's server")
    parser.add_argument("--api-key", default=None, help="require this bearer token (default: accept any)")
    parser.add_argument("--record-requests", action="store_true", help="keep every chat request for /sim/requests")
    faults = parser.add_argument_group("fault injection", "each a probability per chat request, 0..1 (default 0)")
    for name, (config_field, help_text) in _FAULTS.items():
        faults.add_argument(
            "--" + config_field.replace("_", "-"), type=float, default=0.0, metavar="P", help=f"{help_text} ({name})"
        )
    faults.add_argument(
        "--fault-after-chunks",
        type=int,
        default=defaults.fault_after_chunks,
        metavar="N",
        help="content chunks before a reset, stall or malformed event (default: %(default)s)",
    )
    faults.add_argument(
        "--slow-first-byte-delay",
        type=float,
        default=defaults.slow_first_byte_delay,
        metavar="S",
        help="seconds a slow_first_byte response waits (default: %(default)s)",
    )
    faults.add_argument("--seed", type=int, default=None, help="seed the fault draws (default: unseeded)")
    parser.add_argument("--sse-ping", action="store_true", help="send an SSE ': ping' comment before every token")
    parser.add_argument(
        "--keep-alive-timeout", type=float, default=None, metavar="S",
        help="close connections idle for S seconds between requests, as uvicorn does (default: never)",
    )  # fmt: skip
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (used when a parent process owns us)"
    )
    return parser


def _exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            ttft=args.ttft,
            itl=args.itl,
            output_tokens=args.output_tokens,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            send_usage=not args.no_usage,
            api_key=args.api_key,
            record_requests=args.record_requests,
            seed=args.seed,
            fault_after_chunks=args.fault_after_chunks,
            slow_first_byte_delay=args.slow_first_byte_delay,
            sse_ping=args.sse_ping,
            keep_alive_timeout=args.keep_alive_timeout,
            **{config_field: getattr(args, config_field) for config_field, _ in _FAULTS.values()},
        )
    except ValueError as error:
        parser.error(str(error))
    if args.exit_on_stdin_eof:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    try:
        asyncio.run(serve(config, args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
