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

It counts what it received and served; ``GET /sim/stats`` returns the counters as JSON,
``GET /sim/requests`` the recorded chat requests (``--record-requests``), and ``POST /sim/reset``
zeroes both. The server is asyncio on a single thread with no third-party code on the hot path,
so one core serves far more than one load-generator process can send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SimulatorConfig", "SimulatorStats", "count_prompt_tokens", "main", "serve"]

_WORD = re.compile(r"\w+|[^\w\s]")
_VOCABULARY = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_MAX_HEADER_BYTES = 64 * 1024


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


@dataclass
class SimulatorStats:
    """What the simulator received and served; a completion counts as served once its last byte is written."""

    connections_opened: int = 0
    chat_requests: int = 0
    completions_served: int = 0
    prompt_tokens_served: int = 0
    completion_tokens_served: int = 0
    content_chunks_served: int = 0
    models_requests: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    served_by_model: Counter[str] = field(default_factory=Counter)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connections_opened": self.connections_opened,
            "chat_requests": self.chat_requests,
            "completions_served": self.completions_served,
            "prompt_tokens_served": self.prompt_tokens_served,
            "completion_tokens_served": self.completion_tokens_served,
            "content_chunks_served": self.content_chunks_served,
            "models_requests": self.models_requests,
            "rejected": dict(self.rejected),
            "served_by_model": dict(self.served_by_model),
        }


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order, one at a time."""

    def __init__(self, server: _Simulator) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.stats.connections_opened += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

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

    def finish(self) -> None:
        """The current response is complete; serve the next pipelined request, if any."""
        self._busy = False
        self._next_request()

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
        self._server.handle(self, parts[0], parts[1].split("?", 1)[0], headers, body)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._loop = asyncio.get_running_loop()

    def handle(self, conn: _HttpConnection, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        route = (method, path.rstrip("/"))
        if route == ("GET", "/sim/stats"):
            return self._send_json(conn, 200, self.stats.as_dict())
        if route == ("GET", "/sim/requests"):
            return self._send_json(conn, 200, {"requests": self.stats.requests})
        if route == ("POST", "/sim/reset"):
            self.stats = SimulatorStats(connections_opened=int(conn.open))
            return self._send_json(conn, 200, {"reset": True})
        if path.rstrip("/") not in ("/v1/models", "/v1/chat/completions"):
            return self._send_error(conn, 404, f"no route for {path}", "not_found")
        if self.config.api_key and headers.get("authorization") != f"Bearer {self.config.api_key}":
            self.stats.rejected["401"] += 1
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
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        completion = _Completion(
            model=model,
            prompt_tokens=count_prompt_tokens(messages),
            completion_tokens=min(self.config.output_tokens, limit) if limit else self.config.output_tokens,
            finish_reason="length" if limit and limit < self.config.output_tokens else "stop",
        )
        if request.get("stream"):
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            _Stream(self, conn, completion, include_usage and self.config.send_usage).start()
        else:
            delay = self.config.ttft + max(completion.completion_tokens - 1, 0) * self.config.itl
            self._loop.call_later(delay, self._send_whole, conn, completion)

    def served(self, completion: _Completion) -> None:
        self.stats.completions_served += 1
        self.stats.prompt_tokens_served += completion.prompt_tokens
        self.stats.completion_tokens_served += completion.completion_tokens
        self.stats.content_chunks_served += completion.completion_tokens
        self.stats.served_by_model[completion.model] += 1

    def _send_whole(self, conn: _HttpConnection, completion: _Completion) -> None:
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
        self.served(completion)

    def _send_json(self, conn: _HttpConnection, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        conn.write(
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        conn.finish()

    def _send_error(self, conn: _HttpConnection, status: int, message: str, code: str) -> None:
        self._send_json(conn, status, {"error": {"message": message, "type": code, "code": code}})


class _Completion:
    __slots__ = ("completion_tokens", "created", "finish_reason", "id", "model", "prompt_tokens")

    _next_id = 0

    def __init__(self, model: str, prompt_tokens: int, completion_tokens: int, finish_reason: str) -> None:
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


def _sse(data: str) -> bytes:
    """One SSE event framed as one HTTP chunk."""
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


class _Stream:
    """Writes one streamed completion on its schedule: first token at ``ttft``, then one every ``itl``."""

    def __init__(self, server: _Simulator, conn: _HttpConnection, completion: _Completion, include_usage: bool):
        self._server = server
        self._conn = conn
        self._completion = completion
        self._include_usage = include_usage
        self._tokens = completion.tokens()
        self._sent = 0
        self._loop = server._loop

    def start(self) -> None:
        self._conn.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        self._first_token_at = self._loop.time() + self._server.config.ttft
        self._loop.call_at(self._first_token_at, self._send_next)

    def _send_next(self) -> None:
        if not self._conn.open:
            return
        completion = self._completion
        out = bytearray()
        if self._sent == 0:
            out += completion.chunk({"role": "assistant", "content": ""})
        if self._sent < len(self._tokens):
            out += completion.chunk({"content": self._tokens[self._sent]})
            self._sent += 1
        if self._sent < len(self._tokens):
            self._conn.write(bytes(out))
            self._loop.call_at(self._first_token_at + self._sent * self._server.config.itl, self._send_next)
            return
        out += completion.chunk({}, completion.finish_reason)
        if self._include_usage:
            out += completion.usage_chunk()
        out += _sse("[DONE]") + b"0\r\n\r\n"
        self._conn.write(bytes(out))
        self._server.served(completion)
        self._conn.finish()


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
    parser.add_argument(
        "--exit-on-stdin-eof", action="store_true", help="exit when stdin closes (used when a parent process owns us)"
    )
    return parser


def _exit_when_stdin_closes() -> None:
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = SimulatorConfig(
        ttft=args.ttft,
        itl=args.itl,
        output_tokens=args.output_tokens,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        send_usage=not args.no_usage,
        api_key=args.api_key,
        record_requests=args.record_requests,
    )
    if args.exit_on_stdin_eof:
        threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    try:
        asyncio.run(serve(config, args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
