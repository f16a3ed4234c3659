"""Why a message failed, in words that stay the same for the same cause, so reports group them.

Both client engines (LangChain and fast) describe failures only through these functions, so the
same server behaviour gives the same reason whichever engine measured it. Locust shows a reason
as ``MessageFailed('<reason>')`` in its failures table; our error summary shows the bare reason.

==========================================  ===============================================
reason                                      cause
==========================================  ===============================================
``HTTP 429 Too Many Requests``              any non-2xx status, with its standard phrase
``connection error: Connection refused``    the connection could not be made (OS reason)
``connect timeout after 10 s``              no connection within ``--connect-timeout``
``read timeout after 60 s``                 no bytes for ``--read-timeout`` (a stalled stream)
``stream reset after 12 chunks``            the connection broke mid-reply, after N content chunks
``malformed chunk``                         an SSE event that is not valid JSON
``stream error: The model is overloaded``   an error event (``{"error": {...}}``) instead of a chunk
``empty reply``                             HTTP 200 whose stream carried no content at all
``stream ended without [DONE]``             the body ended before ``data: [DONE]``
``stream ended without finish_reason``      ``[DONE]`` came but no choice said why it finished
==========================================  ===============================================
"""

from __future__ import annotations

import re
from http import HTTPStatus

__all__ = [
    "EMPTY_REPLY",
    "MALFORMED_CHUNK",
    "NO_DONE",
    "NO_FINISH_REASON",
    "MessageFailed",
    "connect_timeout",
    "connection_error",
    "http_status",
    "read_timeout",
    "stream_error",
    "stream_reset",
]

EMPTY_REPLY = "empty reply"
MALFORMED_CHUNK = "malformed chunk"
NO_DONE = "stream ended without [DONE]"
NO_FINISH_REASON = "stream ended without finish_reason"


class MessageFailed(Exception):
    """A message failed; the text is a stable reason such as ``HTTP 429 Too Many Requests``."""


def http_status(code: int) -> str:
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code}"


def connection_error(os_reason: str) -> str:
    # "[Errno 111] Connection refused" -> "Connection refused": errno numbers differ across systems.
    reason = os_reason.split("] ", 1)[-1] if os_reason.startswith("[Errno") else os_reason
    return f"connection error: {reason}"


def connect_timeout(seconds: float) -> str:
    return f"connect timeout after {seconds:g} s"


def read_timeout(seconds: float) -> str:
    return f"read timeout after {seconds:g} s"


def stream_reset(content_chunks: int) -> str:
    return f"stream reset after {content_chunks} chunks"


# OpenAI's error messages name the request ("... include the request ID req_123abc ..."): one group, not one each.
_REQUEST_ID = re.compile(r"\breq_[0-9A-Za-z]+")


def stream_error(error: object) -> str:
    """An error event's ``error`` object, worded by its message as the openai SDK reads it."""
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str) or not message:
        message = "An error occurred during streaming"  # the SDK's words for an error without a message
    return f"stream error: {_REQUEST_ID.sub('req_…', message)}"
