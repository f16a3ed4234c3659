"""The fast engine (``--client-engine fast``): the same streamed chat requests, without LangChain or the SDK.

It speaks HTTP/1.1 through geventhttpclient, the library under Locust's ``FastHttpSession``: its
connection pool (keep-alive, connect timeout, TLS) and its C response parser (llhttp: status,
headers, chunked bodies). SSE events are split and decoded here, and only what a message needs is
kept: a timestamp and the text per content chunk, the usage, the finish reason and ``[DONE]``. In
``bench/README.md`` a streamed 20-token message costs 1.5 times the CPU of a bare raw-socket loop
this way, in a Locust process at 200-1,000 users (0.5-0.7 ms on that machine), against 10-16 times
through the LangChain engine. One process keeps its TTFT p99 within ~1-4% of the truth up to ~500
users; the LangChain engine's passes 5% between 10 and 50 users.

What is sent is what ``ChatOpenAI`` sends (the same JSON body, checked against the simulator's
recorded requests), and a message becomes a Locust event in ``message.finish_message`` with
reasons from ``failures``, exactly as for the LangChain engine. ``FastHttpSession`` itself is not
used: it would report every HTTP request to Locust on top of our one event per message, and it
adds cookie and redirect handling that a chat stream does not need.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

# Locust first: importing it lets gevent patch the standard library (import order enforced by ruff).
import gevent
import gevent.ssl
from locust.event import EventHook

import orjson
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError, HTTPSocketPoolResponse

from . import failures
from .endpoint import CLIENT_HEADER, PLACEHOLDER_KEY
from .message import MessageResult, StreamRecord, finish_message
from .options import Settings

__all__ = ["FastChatClient"]


# Each user has at most one request in flight, so the pool never needs more connections than users;
# a bound here could only make users queue for a connection, a delay of ours that no figure would show.
_NO_CONNECTION_LIMIT = 1_000_000
_BLOCK_SIZE = 16 * 1024
_DONE = b"[DONE]"


class _StreamError(Exception):
    """An SSE event that reports an error instead of a chunk; its text is the failure reason."""


class FastChatClient:
    """Sends chat messages to one endpoint for every user of a process, over one keep-alive pool."""

    def __init__(self, base_url: str, settings: Settings, request_event: EventHook, client_id: str = "local") -> None:
        self.base_url = base_url.rstrip("/")
        self._settings = settings
        self._request_event = request_event
        self._chat_url = f"{self.base_url}/chat/completions"
        url = urlsplit(self._chat_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--host {base_url!r} is not an http(s) URL such as http://localhost:8000/v1")
        secure = url.scheme == "https"
        port = url.port or (443 if secure else 80)
        # Every socket a user returns is kept (until the server closes it: checked before reuse), so
        # each user finds a connection of its own however long it paused.
        pool_options: dict[str, Any] = {
            "size": _NO_CONNECTION_LIMIT,
            "connection_timeout": settings.connect_timeout,
            "network_timeout": None,  # the read timeout is the watchdog's (see _Watchdog)
        }
        if secure:
            # Certificates are verified, as the LangChain engine's httpx2 client does.
            self._pool: ConnectionPool = SSLConnectionPool(
                url.hostname, port, url.hostname, port,
                ssl_context_factory=gevent.ssl.create_default_context, **pool_options,
            )  # fmt: skip
        else:
            self._pool = ConnectionPool(url.hostname, port, url.hostname, port, **pool_options)
        self._watchdog = _Watchdog(settings.read_timeout)
        host = url.netloc.rpartition("@")[2]
        path = url.path + (f"?{url.query}" if url.query else "")
        # The request head is the same for every message but for its length: built once.
        self._head = (
            f"POST {path} HTTP/1.1\r\n"
            f"Host: {host}\r\n"
            f"Authorization: Bearer {settings.api_key or PLACEHOLDER_KEY}\r\n"
            f"{CLIENT_HEADER}: {client_id}\r\n"
            "Content-Type: application/json\r\n"
            "Accept: application/json\r\n"
            "User-Agent: bagstress-locust\r\n"
            "Content-Length: "
        ).encode("latin-1")

    def close(self) -> None:
        self._watchdog.stop()
        self._pool.close()

    def request_body(self, messages: list[dict[str, str]], model: str, temperature: float) -> dict[str, Any]:
        """The JSON body ``ChatOpenAI(streaming=True, stream_usage=True)`` sends for the same message."""
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": temperature,
        }
        if self._settings.max_tokens is not None:
            body["max_completion_tokens"] = self._settings.max_tokens  # what ChatOpenAI sends for max_tokens
        return body

    def send(self, messages: list[dict[str, str]], model: str, temperature: float) -> MessageResult:
        """Stream one reply, fire its Locust request event, and return what was measured."""
        record = StreamRecord(model=model)
        # orjson: ~20 times cheaper than json.dumps, and the same compact UTF-8 JSON that httpx2 sends for the SDK.
        body = orjson.dumps(self.request_body(messages, model, temperature))
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        try:
            sock = self._pool.get_socket()
        except TimeoutError:
            record.error = failures.connect_timeout(self._settings.connect_timeout)
        except OSError as error:  # refused, unreachable, name not resolved
            record.error = failures.connection_error(str(error))
        else:
            exchange = _Exchange(sock)
            self._watchdog.watch(exchange)
            try:
                self._exchange(exchange, request, record)
            finally:
                self._watchdog.forget(exchange)
        return finish_message(record, messages, self._request_event, self._chat_url)

    def _exchange(self, exchange: _Exchange, request: bytes, record: StreamRecord) -> None:
        sock = exchange.sock
        try:
            sock.sendall(request)
        except OSError:
            self._pool.release_socket(sock)  # half-written: never reuse it
            record.error = self._broken(exchange, 0)
            return
        except BaseException:  # GreenletExit and the like: the user is being stopped
            self._pool.release_socket(sock)
            raise
        record.sent_at = exchange.last = time.perf_counter()
        response: _EventStream | None = None
        try:
            # Reads the status line and headers; on failure it hands the socket back (closed) itself.
            response = _EventStream(sock, self._pool)
            exchange.last = time.perf_counter()
            status = response.status_code
            if not 200 <= status < 300:
                record.error = failures.http_status(status)
            else:
                _read_stream(response, record, exchange)
            # The rest of the body: the (short) error text, or the last chunk after [DONE]. Read, the
            # connection goes back to the pool; the SDK leaves it unread, and every message opened a new one.
            if record.error is not None or record.done_at is not None:
                while not response.message_complete:
                    response.receive()
        except (OSError, HTTPParseError):  # reset, closed early (HTTPConnectionClosed is an HTTPParseError)
            record.error = record.error or self._broken(exchange, len(record.arrivals))
        except ValueError:  # json.JSONDecodeError, or an event that is not a JSON object
            record.error = failures.MALFORMED_CHUNK
        except _StreamError as error:
            record.error = str(error)
        finally:
            if response is not None:
                # Back to the pool if the whole response was read on a keep-alive connection, else closed.
                response.release()

    def _broken(self, exchange: _Exchange, content_chunks: int) -> str:
        """The reason for a connection that failed: our watchdog's read timeout, or the peer."""
        if exchange.timed_out:
            return failures.read_timeout(self._settings.read_timeout)
        return failures.stream_reset(content_chunks)


class _Exchange:
    """One request in flight: its socket and when it last received anything (``perf_counter``)."""

    __slots__ = ("last", "sock", "timed_out")

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.last = time.perf_counter()
        self.timed_out = False


class _Watchdog:
    """The read timeout of every exchange of one client, kept by one greenlet instead of one timer per read.

    gevent arms and cancels a timer around every wait on a socket that has a timeout: ~2.5 µs of
    the ~20 µs that each chunk costs, spent on nothing. Here sockets have none; this greenlet wakes every
    tenth of the timeout (at most every second) and closes the socket of any exchange that has
    received nothing for ``timeout`` seconds, which wakes its greenlet with an error. A stalled
    stream therefore fails between 1 and 1.1 times ``--read-timeout`` after its last bytes.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._period = min(max(timeout / 10, 0.01), 1.0)
        self._exchanges: set[_Exchange] = set()
        self._greenlet: gevent.Greenlet | None = None

    def watch(self, exchange: _Exchange) -> None:
        self._exchanges.add(exchange)
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def forget(self, exchange: _Exchange) -> None:
        self._exchanges.discard(exchange)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            gevent.sleep(self._period)
            limit = time.perf_counter() - self.timeout
            for exchange in [exchange for exchange in self._exchanges if exchange.last < limit]:
                self._exchanges.discard(exchange)
                exchange.timed_out = True
                exchange.sock.close()


class _EventStream(HTTPSocketPoolResponse):
    """A response whose body is handed over as it arrives.

    geventhttpclient's ``read(n)`` waits for ``n`` bytes and ``readline`` copies the buffer per
    line; an event stream wants every ``recv`` at once, as one batch of lines. The parser (llhttp)
    still does the HTTP work: status, headers, chunked framing, keep-alive.
    """

    def __init__(self, sock: Any, pool: ConnectionPool) -> None:
        self.body = bytearray()  # before the parser starts: the first body bytes may come with the headers
        self._source = sock
        self._more_pending = False
        super().__init__(sock, pool, block_size=_BLOCK_SIZE, method="POST")

    def _on_body(self, buf: bytearray) -> None:  # the parser's callback, body bytes without the chunk framing
        self.body += buf

    def receive(self) -> None:
        """Wait for the next bytes of the body and parse them; call only while not ``message_complete``."""
        sock = self._source
        if not self._more_pending and sock._read_event is not None:  # None: closed (by the watchdog)
            # gevent's recv tries the syscall before it waits, and a stream's next chunk is rarely there
            # yet: a failed recv and an exception per chunk, ~10% of this engine's CPU. Waiting first, on
            # the socket's own watcher, keeps gevent's semantics: closing the socket still wakes us.
            sock._wait(sock._read_event)
        data = sock.recv(_BLOCK_SIZE)
        self._more_pending = len(data) == _BLOCK_SIZE  # a full buffer: more may be waiting in the kernel
        self.feed(data)  # b"" tells the parser that the connection ended: an unfinished body raises
        if not data and not self.message_complete:
            raise HTTPConnectionClosed("connection closed before the end of the body")


def _read_stream(response: _EventStream, record: StreamRecord, exchange: _Exchange) -> None:
    """Read SSE events until ``data: [DONE]`` or the end of the body, filling ``record``.

    As in the openai SDK's decoder, an event is dispatched at the blank line that ends it, data lines
    of one event are joined with a newline, and comment lines (``: ping``) and other fields are ignored.
    Every event of one ``recv`` gets that ``recv``'s time: they arrived together. What follows the
    last blank line waits in ``body`` for the rest of its event.
    """
    body = response.body
    arrivals, pieces = record.arrivals, record.pieces
    perf_counter = time.perf_counter
    arrived = exchange.last
    while True:
        if b"\r" in body:
            body[:] = body.replace(b"\r\n", b"\n")  # CRLF line endings: one form for the searches below
        end = body.rfind(b"\n\n")
        if end >= 0:
            events = bytes(body[:end]).split(b"\n\n")  # no blank line inside: each one event, or none
            del body[: end + 2]
            for event in events:
                if event.startswith(b"data: ") and b"\n" not in event:
                    payload = event[6:]  # the usual shape, one data line: no line splitting
                else:
                    data = _event_data(event)
                    if data is None:
                        continue
                    payload = data
                if payload.startswith(_DONE):
                    record.done_at = arrived
                    return
                event_object = _decode(payload)
                choices = event_object.get("choices")
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        content = delta.get("content")
                        if content:
                            arrivals.append(arrived)
                            pieces.append(content)
                    finish_reason = choice.get("finish_reason")
                    if finish_reason:
                        record.finish_reason = finish_reason
                usage = event_object.get("usage")
                if usage:
                    record.input_tokens = usage.get("prompt_tokens")
                    record.output_tokens = usage.get("completion_tokens")
                if event_object.get("error"):
                    raise _StreamError(failures.stream_error(event_object["error"]))
        if response.message_complete:
            return  # the body ended without [DONE]: finish_message says so
        response.receive()
        arrived = exchange.last = perf_counter()


def _event_data(event: bytes) -> bytes | None:
    """The data of an event of any other shape (several data lines, ``data:`` without a space,
    comments, other fields, blank lines around it), or None if it has none."""
    data = [line[6:] if line[5:6] == b" " else line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return None
    return data[0] if len(data) == 1 else b"\n".join(data)


def _decode(payload: bytes) -> dict[str, Any]:
    """One event's JSON object, as the SDK's ``json.loads`` reads it, at a third of the cost.

    orjson reads strict JSON; what it refuses is handed to ``json.loads``, which also accepts
    ``NaN``, lone surrogates and integers of any size, and otherwise raises the same kind of error.
    """
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        event = json.loads(payload)  # an error here (a ValueError) is a malformed chunk
    if not isinstance(event, dict):
        raise ValueError("an SSE event that is not a JSON object")
    return event
