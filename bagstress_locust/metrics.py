"""LLM figures per message, per model and per run, merged exactly from workers to the master.

Definitions (times from the moment the request is sent):

* **latency** (E2E): until the stream ends (its ``[DONE]`` is read); the same figure as Locust's response time.
* **TTFT**: until the first chunk with non-empty content.
* **ITL**: every gap between consecutive content chunks.
* **TPOT**: (E2E − TTFT) / (output tokens − 1), for replies of two tokens or more.

Latency, TTFT, ITL and TPOT describe successful messages only; a failure's timing says how fast
the server failed, which is reported as the failure. Token totals are the server's usage of
successful messages. Output tokens that arrived before a message failed are counted apart
(``output_in_failed``), estimated from the text received, and never added to ``output``. Token
figures that rest on offline counts (a server that sends no usage) are flagged ``estimated``.

Each worker sends what it measured since its last report with Locust's ``report_to_master``
event and starts afresh, as Locust does for its own stats; the master adds it up. Counts and
totals are therefore exact sums, and percentiles come from the merged histograms.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from .endpoint import MODELS_REQUEST_NAME
from .histogram import LogHistogram
from .message import REQUEST_TYPE, MessageResult

__all__ = ["PERCENTILES", "LLMMetrics", "LLMStats"]

PERCENTILES = (0.5, 0.9, 0.95, 0.99)
_REPORT_KEY = "bagstress_llm"
_TIMINGS = ("latency", "ttft", "itl", "tpot")


class LLMStats:
    """Message counts, tokens and timing histograms for one model, or for all of them."""

    def __init__(self) -> None:
        self.messages = 0
        self.failures = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.output_in_failed = 0
        self.estimated_messages = 0
        self.length_capped = 0
        self.timings: dict[str, LogHistogram] = {name: LogHistogram() for name in _TIMINGS}

    def record(self, result: MessageResult) -> None:
        self.messages += 1
        if result.tokens_estimated:
            self.estimated_messages += 1
        if not result.succeeded:
            self.failures += 1
            self.output_in_failed += result.output_tokens
            return
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        if result.finish_reason == "length":
            self.length_capped += 1
        self.timings["latency"].add(result.e2e_s * 1000)
        if result.ttft_s is not None:
            self.timings["ttft"].add(result.ttft_s * 1000)
            if result.output_tokens > 1:
                self.timings["tpot"].add((result.e2e_s - result.ttft_s) * 1000 / (result.output_tokens - 1))
        itl = self.timings["itl"]
        for gap in result.inter_token_gaps:
            itl.add(gap * 1000)

    def merge(self, other: LLMStats) -> None:
        self.messages += other.messages
        self.failures += other.failures
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.output_in_failed += other.output_in_failed
        self.estimated_messages += other.estimated_messages
        self.length_capped += other.length_capped
        for name, histogram in other.timings.items():
            self.timings[name].merge(histogram)

    def to_dict(self) -> dict[str, Any]:
        counts = {name: getattr(self, name) for name in _COUNT_FIELDS}
        return {**counts, "timings": {name: h.to_dict() for name, h in self.timings.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMStats:
        stats = cls()
        for name in _COUNT_FIELDS:
            setattr(stats, name, data[name])
        stats.timings = {name: LogHistogram.from_dict(h) for name, h in data["timings"].items()}
        return stats


_COUNT_FIELDS = (
    "messages",
    "failures",
    "input_tokens",
    "output_tokens",
    "output_in_failed",
    "estimated_messages",
    "length_capped",
)


class LLMMetrics:
    """The LLM figures of one Locust process; on the master, of the whole run."""

    def __init__(self) -> None:
        self.by_model: dict[str, LLMStats] = {}
        self.by_worker: dict[str, LLMStats] = {}  # on the master: what each worker reported
        self.conversations_succeeded = 0
        self.conversations_failed = 0
        self.cancelled_messages = 0  # in flight when the run stopped; neither success nor failure
        self.conversation_messages = 0  # messages sent by finished conversations
        self.think_time_s = 0.0
        self.errors: Counter[str] = Counter()
        self.started_at: float | None = None
        self.stopped_at: float | None = None

    # ---- public API -------------------------------------------------------------------------------

    def register(self, environment: Environment) -> None:
        """Listen to this process's requests and, in distributed runs, to worker reports."""
        events = environment.events
        events.request.add_listener(self._on_request)
        events.reset_stats.add_listener(lambda **_: self.reset())
        events.test_start.add_listener(self._on_test_start)
        events.test_stop.add_listener(self._on_test_stop)
        if isinstance(environment.runner, WorkerRunner):
            events.report_to_master.add_listener(self._on_report_to_master)
        if isinstance(environment.runner, MasterRunner):
            events.worker_report.add_listener(self._on_worker_report)

    def record_conversation(self, succeeded: bool, messages: int, think_time_s: float) -> None:
        """A conversation ended (conversations cut short by the end of the run are not counted)."""
        if succeeded:
            self.conversations_succeeded += 1
        else:
            self.conversations_failed += 1
        self.conversation_messages += messages
        self.think_time_s += think_time_s

    def record_cancelled(self) -> None:
        self.cancelled_messages += 1

    def reset(self) -> None:
        """Forget every figure (Locust's reset_stats); the run's start and stop times stay."""
        started_at, stopped_at = self.started_at, self.stopped_at
        self.__init__()  # type: ignore[misc]  # the same fresh state as a new instance
        self.started_at, self.stopped_at = started_at, stopped_at

    @property
    def duration_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.stopped_at or time.time()) - self.started_at

    @property
    def total(self) -> LLMStats:
        """All models together, merged when read (a few times a run) rather than recorded twice per message."""
        total = LLMStats()
        for stats in self.by_model.values():
            total.merge(stats)
        return total

    @property
    def tokens_estimated(self) -> bool:
        return self.total.estimated_messages > 0

    def merge(self, other: LLMMetrics) -> None:
        for model, stats in other.by_model.items():
            self.by_model.setdefault(model, LLMStats()).merge(stats)
        self.conversations_succeeded += other.conversations_succeeded
        self.conversations_failed += other.conversations_failed
        self.cancelled_messages += other.cancelled_messages
        self.conversation_messages += other.conversation_messages
        self.think_time_s += other.think_time_s
        self.errors.update(other.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "by_model": {model: stats.to_dict() for model, stats in self.by_model.items()},
            "conversations": [self.conversations_succeeded, self.conversations_failed],
            "cancelled": self.cancelled_messages,
            "conversation_messages": self.conversation_messages,
            "think_time_s": self.think_time_s,
            "errors": dict(self.errors),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LLMMetrics:
        metrics = cls()
        for model, stats in data["by_model"].items():
            metrics.by_model[model] = LLMStats.from_dict(stats)
        metrics.conversations_succeeded, metrics.conversations_failed = data["conversations"]
        metrics.cancelled_messages = data["cancelled"]
        metrics.conversation_messages = data["conversation_messages"]
        metrics.think_time_s = data["think_time_s"]
        metrics.errors.update(data["errors"])
        return metrics

    # ---- event handlers ---------------------------------------------------------------------------

    def _on_request(self, request_type: str, name: str, exception: Exception | None = None, **kwargs: Any) -> None:
        if request_type == REQUEST_TYPE:
            result = (kwargs.get("context") or {}).get("llm")
            if not isinstance(result, MessageResult):
                return
            self.by_model.setdefault(result.model, LLMStats()).record(result)
            if result.error is not None:
                self.errors[result.error] += 1
        elif name == MODELS_REQUEST_NAME and exception is not None:
            self.errors[f"{MODELS_REQUEST_NAME}: {exception}"] += 1

    def _on_test_start(self, **_: Any) -> None:
        self.started_at = time.time()
        self.stopped_at = None

    def _on_test_stop(self, **_: Any) -> None:
        self.stopped_at = time.time()

    def _on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        # Send what was measured since the last report, then start afresh: nothing is sent twice.
        data[_REPORT_KEY] = self.to_dict()
        self.reset()

    def _on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        if _REPORT_KEY in data:
            reported = LLMMetrics.from_dict(data[_REPORT_KEY])
            self.merge(reported)
            self.by_worker.setdefault(client_id, LLMStats()).merge(reported.total)
