"""Streamed chat messages through LangChain's ``ChatOpenAI``, timed and reported as Locust request events.

One ``ChatClient`` serves every user of a process. It keeps one HTTP connection pool (sized to
the number of users, so connections are reused rather than churned) and one ``ChatOpenAI`` per
(model, temperature, max_tokens), built once and never per message. The SDK's own retries are off
by default: a hidden retry would report the sum of two attempts as one latency.

Each message fires exactly one Locust ``request`` event:

* ``request_type`` ``"chat"``, ``name`` the model, so Locust's table splits latency by model;
* ``response_time`` the whole message in ms (request sent → end of stream);
* ``response_length`` the number of output tokens instead of bytes, because it is more useful;
* ``exception`` a ``MessageFailed`` whose text is a stable, groupable reason;
* ``context`` ``{"llm": MessageResult}``, the LLM figures that the metrics listener aggregates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from gevent.local import local

# Locust before httpx2: importing it lets gevent patch sockets (import order enforced by ruff's isort).
from locust.event import EventHook

import httpx2
import openai
from langchain_openai import ChatOpenAI

from .options import Settings
from .tokens import estimate_prompt_tokens, estimate_tokens

__all__ = ["ChatClient", "MessageFailed", "MessageResult", "describe_failure"]

REQUEST_TYPE = "chat"
# Models are fetched once per process; this is the name its (rare) request event is reported under.
MODELS_REQUEST_NAME = "GET /models"
CLIENT_HEADER = "X-Bagstress-Client"
_PLACEHOLDER_KEY = "not-needed"  # the SDK insists on a key; local servers ignore it


class MessageFailed(Exception):
    """A message failed; the text is a stable reason such as ``HTTP 429 Too Many Requests``."""


@dataclass
class MessageResult:
    """Everything measured for one message. Times are seconds from sending the request."""

    model: str
    start_time: float
    e2e_s: float = 0.0
    ttft_s: float | None = None
    content_times: list[float] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_estimated: bool = False
    finish_reason: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @property
    def inter_token_gaps(self) -> list[float]:
        """Seconds between consecutive content chunks."""
        times = self.content_times
        return [later - earlier for earlier, later in pairwise(times)]


def describe_failure(error: BaseException, settings: Settings) -> str:
    """A short reason that stays the same for the same kind of failure, so Locust groups them.

    LangChain wraps the SDK's errors, which wrap httpx2's: the innermost transport error says most.
    """
    if isinstance(error, MessageFailed):
        return str(error)
    chain = _cause_chain(error)
    for cause in chain:
        if isinstance(cause, openai.APIStatusError):
            response = cause.response
            return f"HTTP {response.status_code} {response.reason_phrase}".strip()
        if isinstance(cause, httpx2.ConnectTimeout):
            return f"connect timeout after {settings.connect_timeout:g} s"
        if isinstance(cause, httpx2.ReadTimeout):
            return f"read timeout after {settings.read_timeout:g} s"
        if isinstance(cause, httpx2.ConnectError):
            return f"connection error: {_reason_text(cause)}"
        if isinstance(cause, (httpx2.RemoteProtocolError, httpx2.ReadError)):
            return f"stream broken: {_reason_text(cause)}"
    if any(isinstance(cause, openai.APITimeoutError) for cause in chain):
        return "timeout"
    if any(isinstance(cause, openai.APIConnectionError) for cause in chain):
        return "connection error"
    if any(isinstance(cause, ValueError) for cause in chain):
        return "malformed chunk"
    return f"{type(error).__name__}: {error}"


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _reason_text(error: BaseException) -> str:
    text = str(error)
    # "[Errno 111] Connection refused" -> "Connection refused": errno numbers differ across systems.
    return text.split("] ", 1)[-1] if text.startswith("[Errno") else text


class ChatClient:
    """Sends chat messages to one endpoint for every user of a process."""

    def __init__(
        self, base_url: str, settings: Settings, request_event: EventHook, pool_size: int, client_id: str = "local"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._settings = settings
        self._request_event = request_event
        timeout = httpx2.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.connect_timeout,
        )
        # Unbounded pool: each user has at most one request in flight, so waiting for a pool slot
        # could only add our own queueing to the server's latency. Keep one idle connection per user.
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=pool_size)
        # Times start when the request's last byte is written, not when LangChain starts building it:
        # TTFT is "request sent -> first token", and with retries enabled each attempt is timed on its own.
        self._sent_at = local()
        self._http = httpx2.Client(
            timeout=timeout,
            transport=_ReusingTransport(httpx2.HTTPTransport(limits=limits)),
            event_hooks={"request": [self._mark_sent]},
            # Says which load generator sent a request; the simulator counts by it, real servers ignore it.
            headers={CLIENT_HEADER: client_id},
        )
        self._chat_models: dict[tuple[str, float, int | None], ChatOpenAI] = {}

    def close(self) -> None:
        self._http.close()

    def list_models(self) -> list[str]:
        """The endpoint's model ids (``GET {base}/models``), reported as one Locust request event."""
        start_time = time.time()
        started = time.perf_counter()
        exception: Exception | None = None
        models: list[str] = []
        try:
            response = self._http.get(f"{self.base_url}/models", headers=self._auth_headers())
            response.raise_for_status()
            models = [entry["id"] for entry in response.json()["data"]]
        except httpx2.HTTPStatusError as error:
            exception = MessageFailed(f"HTTP {error.response.status_code} {error.response.reason_phrase}")
        except httpx2.TransportError as error:
            exception = MessageFailed(f"connection error: {_reason_text(error)}")
        except (ValueError, KeyError, TypeError) as error:
            exception = MessageFailed(f"malformed model list: {type(error).__name__}")
        self._request_event.fire(
            request_type="models",
            name=MODELS_REQUEST_NAME,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(models),
            exception=exception,
            context={},
            start_time=start_time,
            url=f"{self.base_url}/models",
        )
        if exception is not None:
            raise exception
        return models

    def send(self, messages: list[dict[str, str]], model: str, temperature: float) -> MessageResult:
        """Stream one reply, fire its Locust request event, and return what was measured."""
        chat = self._chat_model(model, temperature)
        result = MessageResult(model=model, start_time=time.time())
        arrivals: list[float] = []
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        self._sent_at.value = None
        called = time.perf_counter()
        try:
            for chunk in chat.stream(messages):
                if chunk.content:
                    arrivals.append(time.perf_counter())
                    pieces.append(chunk.content)  # type: ignore[arg-type]  # str for chat completions
                if chunk.usage_metadata:
                    usage = chunk.usage_metadata  # type: ignore[assignment]
                if chunk.response_metadata.get("finish_reason"):
                    result.finish_reason = chunk.response_metadata["finish_reason"]
        except Exception as error:  # every failure is reported, none may end the user
            result.error = describe_failure(error, self._settings)
        ended = time.perf_counter()
        sent = self._sent_at.value or called  # None only if it failed before anything was sent
        result.start_time += sent - called
        result.e2e_s = ended - sent
        result.content_times = [arrival - sent for arrival in arrivals]
        if result.error is None and not arrivals:
            result.error = "empty reply: the stream carried no content"
        if arrivals:
            result.ttft_s = result.content_times[0]
        if usage is not None and result.error is None:
            result.input_tokens = usage["input_tokens"]
            result.output_tokens = usage["output_tokens"]
        else:
            # No usage (the server sends none, or the stream broke before it): count what arrived.
            result.input_tokens = estimate_prompt_tokens(messages)
            result.output_tokens = estimate_tokens("".join(pieces))
            result.tokens_estimated = True
        self._request_event.fire(
            request_type=REQUEST_TYPE,
            name=model,
            response_time=result.e2e_s * 1000,
            response_length=result.output_tokens,
            exception=MessageFailed(result.error) if result.error else None,
            context={"llm": result},
            start_time=result.start_time,
            url=f"{self.base_url}/chat/completions",
        )
        return result

    def _mark_sent(self, request: httpx2.Request) -> None:
        request.extensions["trace"] = self._trace

    def _trace(self, event: str, info: dict[str, Any]) -> None:
        # httpcore2's trace hook: the request is on the wire once its body is written (h11 and h2 alike).
        if event.endswith("send_request_body.complete"):
            self._sent_at.value = time.perf_counter()

    def _chat_model(self, model: str, temperature: float) -> ChatOpenAI:
        # Temperatures are drawn at random; rounding to 0.01 keeps this cache small.
        key = (model, round(temperature, 2), self._settings.max_tokens)
        chat = self._chat_models.get(key)
        if chat is None:
            chat = ChatOpenAI(
                model=model,
                temperature=key[1],
                max_tokens=self._settings.max_tokens,  # type: ignore[call-arg]  # alias of max_completion_tokens
                base_url=self.base_url,
                api_key=self._settings.api_key or _PLACEHOLDER_KEY,  # type: ignore[arg-type]
                http_client=self._http,
                max_retries=self._settings.max_retries,
                streaming=True,
                stream_usage=True,
            )
            self._chat_models[key] = chat
        return chat

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._settings.api_key or _PLACEHOLDER_KEY}"}


class _ReusingTransport(httpx2.BaseTransport):
    """Returns streamed connections to the pool.

    The openai SDK closes a stream as soon as it reads ``data: [DONE]``, before the chunked body's
    terminator is read, so the connection cannot be reused and every message opened a new one.
    When a body has reached ``[DONE]`` we read the (already buffered) rest before closing.
    """

    def __init__(self, inner: httpx2.HTTPTransport) -> None:
        self._inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            response.stream = _DrainAfterDone(response.stream)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        self._inner.close()


class _DrainAfterDone(httpx2.SyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._last = b""

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            self._last = part
            yield part

    def close(self) -> None:
        try:
            if self._last.rstrip().endswith(b"[DONE]"):
                for _ in self._inner:
                    pass
        finally:
            self._inner.close()
