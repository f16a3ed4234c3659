"""One chat message as measured, whichever engine streamed it, and the Locust event it becomes.

An engine fills a ``StreamRecord`` while it streams (a timestamp and the text per content chunk,
nothing else on that path) and ends with ``finish_message``, which turns it into a
``MessageResult`` and fires the message's one Locust ``request`` event. Keeping that here is
what makes both engines report the same figures and the same failure reasons:

* ``request_type`` ``"chat"``, ``name`` the model, so Locust's table splits latency by model;
* ``response_time`` the whole message in ms, from the request's last byte written to the stream's
  ``[DONE]`` read (or to the failure);
* ``response_length`` the number of output tokens instead of bytes, because it is more useful;
* ``exception`` a ``MessageFailed`` whose text is a stable, groupable reason (``failures``);
* ``context`` ``{"llm": MessageResult}``, the LLM figures that the metrics listener aggregates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Protocol

from locust.event import EventHook

from .failures import EMPTY_REPLY, NO_DONE, NO_FINISH_REASON, MessageFailed
from .tokens import estimate_prompt_tokens, estimate_tokens

__all__ = ["REQUEST_TYPE", "ChatEngine", "MessageResult", "StreamRecord", "finish_message"]

REQUEST_TYPE = "chat"


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
        return [later - earlier for earlier, later in pairwise(self.content_times)]


class ChatEngine(Protocol):
    """What the user needs of an engine; the constructor's signature is shared too (see scenario)."""

    base_url: str

    def __init__(self, base_url: str, settings: Any, request_event: EventHook, client_id: str = "local") -> None: ...

    def send(self, messages: list[dict[str, str]], model: str, temperature: float) -> MessageResult:
        """Stream one reply, fire its Locust request event through ``finish_message``, return the result."""
        ...

    def close(self) -> None: ...


@dataclass
class StreamRecord:
    """What an engine saw of one streamed reply; ``perf_counter`` times, as they happened."""

    model: str
    called_at: float = field(default_factory=time.perf_counter)
    start_time: float = field(default_factory=time.time)
    sent_at: float | None = None  # when the request's last byte was written
    arrivals: list[float] = field(default_factory=list)  # one per content chunk
    pieces: list[str] = field(default_factory=list)
    input_tokens: int | None = None  # the server's usage, when it sends one
    output_tokens: int | None = None
    finish_reason: str | None = None
    done_at: float | None = None  # when data: [DONE] was read, the stream's end; None if it never came
    error: str | None = None  # set by the engine when the exchange failed


def finish_message(
    record: StreamRecord, messages: list[dict[str, str]], request_event: EventHook, url: str
) -> MessageResult:
    """Judge the stream, count its tokens, fire its Locust event, and return the result."""
    # A whole stream ends when its [DONE] was read: what the client does after that is not the server's time.
    ended_at = record.done_at or time.perf_counter()
    sent_at = record.sent_at or record.called_at  # called_at only if it failed before anything was sent
    error = record.error
    if error is None:
        # A 200 is not a success unless the stream is whole: real servers fail quietly like this.
        if not record.arrivals:
            error = EMPTY_REPLY
        elif record.done_at is None:
            error = NO_DONE
        elif record.finish_reason is None:
            error = NO_FINISH_REASON
    result = MessageResult(
        model=record.model,
        start_time=record.start_time + (sent_at - record.called_at),
        e2e_s=ended_at - sent_at,
        content_times=[arrival - sent_at for arrival in record.arrivals],
        finish_reason=record.finish_reason,
        error=error,
    )
    if result.content_times:
        result.ttft_s = result.content_times[0]
    if error is None and record.input_tokens is not None and record.output_tokens is not None:
        result.input_tokens, result.output_tokens = record.input_tokens, record.output_tokens
    else:
        # No usage (the server sends none, or the stream broke before it): count what was sent and received.
        result.input_tokens = estimate_prompt_tokens(messages)
        result.output_tokens = estimate_tokens("".join(record.pieces))
        result.tokens_estimated = True
    request_event.fire(
        request_type=REQUEST_TYPE,
        name=record.model,
        response_time=result.e2e_s * 1000,
        response_length=result.output_tokens,
        exception=MessageFailed(error) if error else None,
        context={"llm": result},
        start_time=result.start_time,
        url=url,
    )
    return result
