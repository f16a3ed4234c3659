"""Reference load generators without Locust and without our code on the hot path, to compare ours with.

    uv run python bench/reference.py --client raw --host http://127.0.0.1:8000/v1 --users 50

``--client raw``: the cheapest client we know, a gevent raw-socket loop. One keep-alive socket per
user, the request written in one ``sendall``, the response read with ``recv`` and never parsed
beyond counting the simulator's content events (``"content": "<text>"``) and spotting the end of
the chunked body. TTFT is from the write to the first ``recv`` holding a content event. It only
understands the simulator's exact bytes; it is a yardstick, not a client.

``--client langchain``: the loop a LangChain user would write, ``for chunk in chat.stream(messages)``
with one shared ``ChatOpenAI(base_url=..., stream_usage=True, max_retries=0)`` under gevent, timed
from the call to the first chunk with content. The reference for our LangChain engine's overhead.

Both send the shipped conversations' turns back to back (no think time), with senders started
evenly over ``--spawn`` seconds, and print one JSON object (see ``_harness.Window``) for a window of
``--window`` seconds that opens ``--warmup`` seconds after the last sender started.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()  # before anything opens a socket, as Locust does on import

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.socket  # noqa: E402

from _harness import ROOT, Window  # noqa: E402

from bagstress_locust.conversations import load_conversations, plan_turns  # noqa: E402
from bagstress_locust.histogram import LogHistogram  # noqa: E402
from bagstress_locust.selfcheck import LagProbe  # noqa: E402  # loads Locust's modules, idle: only for the probe

Sender = Callable[[list[dict[str, str]]], tuple[float | None, float, int]]  # -> ttft_s, e2e_s, content chunks


def turns() -> list[list[dict[str, str]]]:
    return [
        turn.request
        for conversation in load_conversations(ROOT / "conversations")
        for turn in plan_turns(conversation, random.Random(0), cut_probability=0)
    ]


def raw_sender(base_url: str) -> Callable[[], Sender]:
    """A factory of per-user senders, each with its own keep-alive socket."""
    url = urlsplit(base_url.rstrip("/") + "/chat/completions")
    address = (url.hostname, url.port or 80)
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer not-needed\r\n"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()

    def make() -> Sender:
        sock: gevent.socket.socket | None = None

        def send(messages: list[dict[str, str]]) -> tuple[float | None, float, int]:
            nonlocal sock
            body = json.dumps(
                {"model": "sim-small", "messages": messages, "stream": True,
                 "stream_options": {"include_usage": True}, "temperature": 0.7}
            ).encode()  # fmt: skip
            if sock is None:
                sock = gevent.socket.create_connection(address)
            sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
            sent = time.perf_counter()
            first: float | None = None
            chunks = 0
            tail = b""
            while True:
                data = sock.recv(65536)
                if not data:
                    sock.close()
                    sock = None
                    raise ConnectionError("closed mid-stream")
                count = data.count(b'"content": "') - data.count(b'"content": ""')
                if count:
                    chunks += count
                    if first is None:
                        first = time.perf_counter()
                tail = (tail + data)[-5:]
                if tail == b"0\r\n\r\n":  # the chunked body's last chunk
                    return (None if first is None else first - sent), time.perf_counter() - sent, chunks

        return send

    return make


def langchain_sender(base_url: str) -> Callable[[], Sender]:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="sim-small", temperature=0.7, base_url=base_url, api_key="not-needed",  # type: ignore[arg-type]
        max_retries=0, streaming=True, stream_usage=True,
    )  # fmt: skip

    def send(messages: list[dict[str, str]]) -> tuple[float | None, float, int]:
        started = time.perf_counter()
        first: float | None = None
        chunks = 0
        for chunk in chat.stream(messages):
            if chunk.content:
                chunks += 1
                if first is None:
                    first = time.perf_counter()
        return (None if first is None else first - started), time.perf_counter() - started, chunks

    return lambda: send


def figures(histogram: LogHistogram) -> dict[str, float | None]:
    return {"p50": histogram.quantile(0.5), "p99": histogram.quantile(0.99), "count": histogram.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=["raw", "langchain"], required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--spawn", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=8.0)
    args = parser.parse_args()

    make_sender = raw_sender(args.host) if args.client == "raw" else langchain_sender(args.host)
    requests = turns()
    ttft, e2e = LogHistogram(), LogHistogram()
    counts = {"messages": 0, "chunks": 0, "errors": 0}
    recording = False

    def user(index: int) -> None:
        gevent.sleep(index * args.spawn / args.users)
        send = make_sender()
        for messages in itertools.islice(itertools.cycle(requests), index, None):
            try:
                first, total, chunks = send(messages)
            except Exception:  # a reference client just counts failures
                counts["errors"] += 1
                continue
            if recording:
                counts["messages"] += 1
                counts["chunks"] += chunks
                e2e.add(total * 1000)
                if first is not None:
                    ttft.add(first * 1000)

    window = Window(args.host)
    greenlets = [gevent.spawn(user, index) for index in range(args.users)]
    probe = LagProbe()  # the same self-check as in our Locust processes
    probe.start()
    gevent.sleep(args.spawn + args.warmup)
    window.open()
    probe.take()
    recording = True
    gevent.sleep(args.window)
    recording = False
    lag = probe.take().lag
    report = window.close(
        counts["messages"], counts["chunks"], figures(ttft), figures(e2e),
        {"p50": lag.quantile(0.5), "p99": lag.quantile(0.99)},
    )  # fmt: skip
    report["errors"] = counts["errors"]
    json.dump(report, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    probe.stop()
    gevent.killall(greenlets, block=False)


if __name__ == "__main__":
    main()
