"""The default engine: streamed chat messages through LangChain's ``ChatOpenAI``, under gevent.

One ``ChatClient`` serves every user of a process. It keeps one HTTP client, in which each user
has a connection of its own, reused from message to message, and one ``ChatOpenAI`` per model,
built once and never per message; the temperature drawn for a conversation goes with each call.
The SDK's own retries are off by default: a hidden retry would report the sum of two attempts as
one latency. What a message becomes in Locust is decided in ``message.py``, the same for every engine.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

# Locust before httpx2: importing it lets gevent patch sockets (import order enforced by ruff's isort).
from gevent.local import local
from locust.event import EventHook

import httpx2
import openai
from langchain_openai import ChatOpenAI

from . import failures
from .endpoint import CLIENT_HEADER, PLACEHOLDER_KEY
from .message import MessageResult, StreamRecord, finish_message
from .options import Settings

__all__ = ["ChatClient", "describe_failure"]


def describe_failure(error: BaseException, settings: Settings, content_chunks: int) -> str:
    """The ``failures`` reason for an exception out of LangChain, the SDK or httpx2.

    LangChain wraps the SDK's errors, which wrap httpx2's: the innermost transport error says most.
    """
    chain = _cause_chain(error)
    for cause in chain:
        if isinstance(cause, openai.APIStatusError):
            return failures.http_status(cause.response.status_code)
        if isinstance(cause, httpx2.ConnectTimeout):
            return failures.connect_timeout(settings.connect_timeout)
        if isinstance(cause, httpx2.ReadTimeout):
            return failures.read_timeout(settings.read_timeout)
        if isinstance(cause, httpx2.ConnectError):
            return failures.connection_error(str(cause))
        if isinstance(cause, (httpx2.RemoteProtocolError, httpx2.ReadError)):
            return failures.stream_reset(content_chunks)
        if type(cause) is openai.APIError:  # raised for an error event inside a 200 stream; body = its "error"
            return failures.stream_error(cause.body)
    if any(isinstance(cause, json.JSONDecodeError) for cause in chain):
        return failures.MALFORMED_CHUNK
    if content_chunks == 0 and isinstance(error, ValueError) and "No generation chunks" in str(error):
        return failures.EMPTY_REPLY  # LangChain's own complaint about a stream with nothing in it
    return f"{type(error).__name__}: {error}"


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class ChatClient:
    """Sends chat messages to one endpoint for every user of a process."""

    def __init__(self, base_url: str, settings: Settings, request_event: EventHook, client_id: str = "local") -> None:
        self.base_url = base_url.rstrip("/")
        self._settings = settings
        self._request_event = request_event
        self._timeout = timeout = httpx2.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        )
        # Per greenlet (user): the message it is streaming, and its own connection pool. Times start
        # when the request's last byte is written, not when LangChain starts building it (TTFT is
        # "request sent -> first token"; with retries enabled each attempt is timed on its own), and
        # the transport notes data: [DONE].
        self._exchange = local()
        self._http = httpx2.Client(
            timeout=timeout,
            transport=_ReusingTransport(self._exchange),
            event_hooks={"request": [self._mark_sent]},
            headers={CLIENT_HEADER: client_id},
        )
        self._chat_url = f"{self.base_url}/chat/completions"
        self._unused_async_http = httpx2.AsyncClient()
        self._chat_models: dict[str, ChatOpenAI] = {}

    def close(self) -> None:
        self._http.close()

    def send(self, messages: list[dict[str, str]], model: str, temperature: float) -> MessageResult:
        """Stream one reply, fire its Locust request event, and return what was measured."""
        chat = self._chat_model(model)
        record = StreamRecord(model=model)
        self._exchange.record = record
        arrivals, pieces = record.arrivals, record.pieces
        try:
            # The temperature per call, not per instance: an instance per temperature drawn cost a blocked
            # process for each new one (~20 ms of lag at p99 in bench/, ~0.7 MB each).
            for chunk in chat.stream(messages, temperature=temperature):
                if chunk.content:
                    arrivals.append(time.perf_counter())
                    pieces.append(chunk.content)  # type: ignore[arg-type]  # str for chat completions
                if chunk.usage_metadata:
                    record.input_tokens = chunk.usage_metadata["input_tokens"]
                    record.output_tokens = chunk.usage_metadata["output_tokens"]
                if chunk.response_metadata.get("finish_reason"):
                    record.finish_reason = chunk.response_metadata["finish_reason"]
        except Exception as error:  # every failure is reported, none may end the user
            record.error = describe_failure(error, self._settings, len(arrivals))
        return finish_message(record, messages, self._request_event, self._chat_url)

    def _mark_sent(self, request: httpx2.Request) -> None:
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        # httpcore2's trace hook: the request is on the wire once its body is written (h11 and h2 alike).
        if event.endswith("send_request_body.complete"):
            self._exchange.record.sent_at = time.perf_counter()

    def _chat_model(self, model: str) -> ChatOpenAI:
        chat = self._chat_models.get(model)
        if chat is None:
            chat = ChatOpenAI(
                model=model,
                max_tokens=self._settings.max_tokens,  # type: ignore[call-arg]  # alias of max_completion_tokens
                base_url=self.base_url,
                api_key=self._settings.api_key or PLACEHOLDER_KEY,  # type: ignore[arg-type]
                http_client=self._http,
                # Never used (we stream synchronously); given so each instance does not build its own.
                http_async_client=self._unused_async_http,
                # The SDK sends its own timeout with every request (600 s by default), overriding the client's.
                timeout=self._timeout,
                max_retries=0,  # retries are the user's (--max-retries), so each attempt is its own event
                streaming=True,
                stream_usage=True,
            )
            self._chat_models[model] = chat
        return chat


class _ReusingTransport(httpx2.BaseTransport):
    """Gives each user a connection of its own, and returns streamed connections to it.

    One pool per user (greenlet), keeping its one connection for as long as the server does
    (httpcore2 drops a connection that the server closed before reusing it). One pool for all
    users would do the same, slower: httpcore2 probes every idle connection of a pool for every
    request, and with typing pauses most of them are idle (at 500 users, more than the message
    itself costs). Its default 5 s keep-alive expiry also reconnected after every pause over 5 s.

    The openai SDK closes a stream as soon as it reads ``data: [DONE]``, before the chunked body's
    terminator is read, so the connection cannot be reused and every message opened a new one.
    When a body has reached ``[DONE]`` we read the (already buffered) rest before closing. The SDK
    also ends quietly when a body ends *without* ``[DONE]``; noting it here lets that be a failure,
    and its time ends the message before LangChain's own end-of-stream work.
    """

    def __init__(self, exchange: Any) -> None:
        self._exchange = exchange
        self._pools: list[httpx2.HTTPTransport] = []
        # One for all pools: each would otherwise load the CA bundle itself (~20 ms, ~0.7 MB).
        self._ssl_context = httpx2.create_ssl_context()
        self._limits = httpx2.Limits(max_connections=None, max_keepalive_connections=1, keepalive_expiry=None)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        pool = getattr(self._exchange, "pool", None)
        if pool is None:
            pool = self._exchange.pool = httpx2.HTTPTransport(verify=self._ssl_context, limits=self._limits)
            self._pools.append(pool)
        response = pool.handle_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            record = getattr(self._exchange, "record", None)
            response.stream = _DrainAfterDone(response.stream, record)
        return response

    def close(self) -> None:
        for pool in self._pools:
            pool.close()


_DONE_EVENTS = (b"data: [DONE]", b"data:[DONE]")
_DONE_TAIL_BYTES = 64  # the [DONE] line and the line ends after it, with room to spare


class _DrainAfterDone(httpx2.SyncByteStream):
    def __init__(self, inner: Any, record: StreamRecord | None) -> None:
        self._inner = inner
        self._record = record
        self._done_at: float | None = None

    def __iter__(self) -> Iterator[bytes]:
        tail = b""
        for part in self._inner:
            # The SDK stops at the blank line after [DONE], so the body read so far ends with it. Not the
            # last part alone: a proxy may cut "data: [DONE]" or its line ends into separate reads.
            tail = (tail + part[-_DONE_TAIL_BYTES:])[-_DONE_TAIL_BYTES:]
            self._done_at = time.perf_counter() if tail.rstrip().endswith(_DONE_EVENTS) else None
            yield part

    def close(self) -> None:
        try:
            if self._done_at is not None:
                if self._record is not None:
                    self._record.done_at = self._done_at
                for _ in self._inner:
                    pass
        finally:
            self._inner.close()
