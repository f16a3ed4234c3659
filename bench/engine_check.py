"""Send a fixed sequence of messages through one engine, outside Locust's runner, and print what it measured.

    uv run python bench/engine_check.py --host http://127.0.0.1:8000/v1 --engine fast --messages 40

Every conversation turn of ``conversations/`` is sent in order (then again, until ``--messages``),
with model ``sim-small`` and temperature 0.7, by ``--users`` greenlets (one by default, so that a
seeded simulator injects its faults into the same messages whichever engine sends them). The
engine fires its events into a fresh Locust ``Environment`` whose only listener is the plugin's
``LLMMetrics``, exactly as in a real run. Printed, as one JSON object::

    {"engine", "results": [{"error", "input_tokens", "output_tokens", "estimated", "finish_reason",
                            "chunks", "ttft_ms", "e2e_ms"}, ...],   # in sending order (one user)
     "summary": {...}}                                              # report.summary(), as --summary-json

``tests/test_engines.py`` compares the two engines with it; it is also a quick way to see what an
engine makes of a misbehaving endpoint.
"""

from __future__ import annotations

# Locust first: importing it lets gevent patch the standard library before any HTTP client loads.
import locust  # noqa: F401  # isort: skip

import argparse
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

import gevent
from locust.env import Environment

from bagstress_locust.conversations import load_conversations, plan_turns
from bagstress_locust.message import MessageResult
from bagstress_locust.metrics import LLMMetrics
from bagstress_locust.options import Settings
from bagstress_locust.report import summary
from bagstress_locust.scenario import _engine_class

ROOT = Path(__file__).resolve().parent.parent


def requests_to_send(count: int) -> list[list[dict[str, str]]]:
    """``count`` requests: every turn of every shipped conversation, in order, repeated as needed."""
    turns = [
        turn.request
        for conversation in load_conversations(ROOT / "conversations")
        for turn in plan_turns(conversation, random.Random(0), cut_probability=0)
    ]
    return list(itertools.islice(itertools.cycle(turns), count))


def result_row(result: MessageResult) -> dict[str, Any]:
    return {
        "error": result.error,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "estimated": result.tokens_estimated,
        "finish_reason": result.finish_reason,
        "chunks": len(result.content_times),
        "ttft_ms": None if result.ttft_s is None else round(result.ttft_s * 1000, 3),
        "e2e_ms": round(result.e2e_s * 1000, 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings(
        max_tokens=args.max_tokens,
        connect_timeout=args.connect_timeout,
        read_timeout=args.read_timeout,
        client_engine=args.engine,
        api_key=args.api_key,
    )
    environment = Environment()
    metrics = LLMMetrics()
    metrics.register(environment)
    environment.events.test_start.fire(environment=environment)
    client = _engine_class(args.engine)(args.host, settings, environment.events.request, client_id=args.client_id)
    requests = requests_to_send(args.messages)
    results: list[MessageResult | None] = [None] * len(requests)

    def user(first: int) -> None:
        for index in range(first, len(requests), args.users):
            if index >= args.users:
                gevent.sleep(args.pause)  # as a person types the next message
            results[index] = client.send(requests[index], "sim-small", 0.7)

    gevent.joinall([gevent.spawn(user, first) for first in range(args.users)], raise_error=True)
    client.close()
    environment.events.test_stop.fire(environment=environment)
    return {
        "engine": args.engine,
        "results": [result_row(result) for result in results if result is not None],
        "summary": summary(metrics),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="OpenAI base URL, /v1 included")
    parser.add_argument("--engine", choices=["langchain", "fast"], default="langchain")
    parser.add_argument("--messages", type=int, default=20, help="messages to send (default: %(default)s)")
    parser.add_argument("--users", type=int, default=1, help="concurrent senders (default: %(default)s)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between a sender's messages")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--connect-timeout", type=float, default=10.0)
    parser.add_argument("--read-timeout", type=float, default=60.0)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--client-id", default="engine-check", help="the X-Bagstress-Client header")
    args = parser.parse_args(argv)
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
