"""The endpoint seen from the load generator: its model list, and a probe before users start.

Kept apart from ``models`` (pure choices) because it needs Locust imported first, for gevent.
"""

from __future__ import annotations

import time

# Locust before httpx2: importing it lets gevent patch sockets.
from locust.event import EventHook

import httpx2

from . import failures
from .failures import MessageFailed
from .models import NoModelsError, eligible_models

__all__ = [
    "CLIENT_HEADER",
    "MODELS_REQUEST_NAME",
    "PLACEHOLDER_KEY",
    "EndpointError",
    "check_endpoint",
    "fetch_models",
]

# Says which load generator sent a request; the simulator counts by it, real servers ignore it.
CLIENT_HEADER = "X-Bagstress-Client"

# Models are fetched once per process; this is the name their (rare) request event is reported under.
MODELS_REQUEST_NAME = "GET /models"
PLACEHOLDER_KEY = "not-needed"  # OpenAI-compatible local servers want some bearer token, and ignore it


def fetch_models(base_url: str, api_key: str | None, request_event: EventHook, settings_timeout: float) -> list[str]:
    """``GET {base}/models``, reported as one Locust request event (type ``models``) so it is seen."""
    url = f"{base_url.rstrip('/')}/models"
    start_time = time.time()
    started = time.perf_counter()
    exception: MessageFailed | None = None
    models: list[str] = []
    headers = {"Authorization": f"Bearer {api_key or PLACEHOLDER_KEY}"}
    try:
        with httpx2.Client(timeout=settings_timeout) as http:
            response = http.get(url, headers=headers)
        if response.status_code != 200:
            exception = MessageFailed(failures.http_status(response.status_code))
        else:
            models = [entry["id"] for entry in response.json()["data"]]
    except httpx2.TimeoutException:
        exception = MessageFailed(failures.read_timeout(settings_timeout))
    except httpx2.TransportError as error:
        exception = MessageFailed(failures.connection_error(str(error)))
    except (ValueError, KeyError, TypeError):
        exception = MessageFailed("malformed model list")
    request_event.fire(
        request_type="models",
        name=MODELS_REQUEST_NAME,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=len(models),
        exception=exception,
        context={},
        start_time=start_time,
        url=url,
    )
    if exception is not None:
        raise exception
    return models


class EndpointError(RuntimeError):
    """The endpoint cannot serve this run at all (unreachable, key refused, no usable model)."""


def check_endpoint(
    base_url: str, model: str | None, model_filter: set[str], api_key: str | None, request_event: EventHook,
    timeout: float,
) -> list[str] | None:  # fmt: skip
    """Probe ``GET /models`` once before users start; return the eligible models (None with a fixed model).

    Raises EndpointError with one line that says what is wrong and what to do.
    """
    try:
        listed = fetch_models(base_url, api_key, request_event, timeout)
    except MessageFailed as failure:
        reason = str(failure)
        if reason in (failures.http_status(401), failures.http_status(403)):
            raise EndpointError(
                f"{base_url} refused the API key ({reason}): set OPENAI_API_KEY in the environment or .env"
            ) from None
        if not reason.startswith("HTTP "):
            raise EndpointError(
                f"cannot reach {base_url} ({reason}): check --host / OPENAI_API_BASE (the base URL, /v1 included)"
            ) from None
        if model is None:
            raise EndpointError(f"GET {base_url}/models failed ({reason}): set --model to the model to test") from None
        return None  # some servers list no models; with a fixed model that is fine
    if model is not None:
        return None
    try:
        return eligible_models(listed, model_filter)
    except NoModelsError as error:
        raise EndpointError(str(error)) from None
