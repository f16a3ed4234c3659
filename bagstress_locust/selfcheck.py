"""Is the load generator distorting what it measures? Every process that runs users checks itself.

A Locust process runs all its users on one thread. When it has more work than it can do at once,
a greenlet whose chunk has arrived waits for its turn before it takes the timestamp, and that wait
is added to TTFT, ITL and E2E as if the server had been slower. It happens long before the CPU is
full, and Locust's own CPU warning only fires at 90% (``bench/README.md`` has the measurements).
So each such process measures the wait itself:

* **scheduling lag**: a native thread writes a tick into a pipe every ``LAG_INTERVAL_S`` (20 ms)
  and a greenlet waits on that pipe exactly as users wait on their sockets; how late it reads each
  tick is the lag. Ticks the thread could only write late (the process held the GIL, a garbage
  collection, a blocking call) keep their due time, so the values are one per 20 ms of wall time:
  their distribution is what a chunk arriving at any moment waits. (A greenlet that sleeps and
  measures its own oversleep, tried first, saw far less: 1 ms at p99 when TTFT p99 was 37% high.)
  The first ``WARMUP_S`` (2 s) after the test starts are left out: imports on first use and the
  first clients block the process once, which says nothing of the load;
* **CPU**: the process's CPU time over every ``CPU_INTERVAL_S`` (2 s), in % of one core.

**The rule.** A process is *inflated* when its lag p99 is above ``INFLATION_SHARE`` (3%) of the
run's TTFT p50, and above ``LAG_FLOOR_MS`` (2 ms, the noise of an idle process on a busy machine).
Why 3% for a 5% tolerance: in the bench the TTFT p99 error was 0.6 to 1.1 times the lag p99, up to
2-3 times in some runs of the fast engine (chunks arrive in bursts, when the process is busiest).
At 2% the LangChain engine was flagged at a few users: it builds each request in one block of
~3 ms (LangChain and the SDK), a lag p99 of ~4.5 ms that moves TTFT p99 by 2%. With 3% the warning
appeared in the bench where the TTFT p99 error passed ~5% (``bench/README.md``).

**How many more processes.** Spreading the same users over ``P`` processes divides each one's load
(its CPU share ``ρ``) by ``P``. The lag grows with the queue of ready greenlets, roughly as
``ρ / (1 - ρ)`` (a single-server queue), so ``P`` is the smallest count that brings the lag under
the threshold by that law, and never less than what keeps each process under
``CPU_TARGET_PERCENT`` (50%) of a core. A saturated process (``SATURATED_PERCENT``, 90%) no longer
shows in its CPU how much more it was asked to do; ``P`` is then at least lag ÷ threshold, and the
warning says "at least".

Workers send their figures to the master with every ``report_to_master`` (what they measured
since the last report, as ``metrics`` does), and the master keeps them per worker. The figures
start at ``test_start``, end at ``test_stopping`` (stopping users and writing reports are not
load) and are cleared by ``reset_stats``. At ``test_start`` the process's objects are also frozen
out of the garbage collector's reach (``gc.freeze``): they live as long as the process, and
walking them made each full collection a pause of ~90 ms at 500 users.

``summary(ttft_p50_ms)`` gives, for ``--summary-json``::

    {"lag_p99_ms", "cpu_max_percent", "inflated", "threshold_ms", "more_processes",
     "workers": {"<worker id, or 'local'>": {"lag_p50_ms", "lag_p99_ms", "cpu_max_percent",
                                             "inflated", "more_processes", "saturated"}}}

and ``warnings(ttft_p50_ms)`` one line per inflated process for the console and reports.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import os
import struct
import time
from typing import TYPE_CHECKING, Any

import gevent
import gevent.monkey
import gevent.socket

import psutil

from .histogram import LogHistogram

if TYPE_CHECKING:
    from locust.env import Environment

__all__ = [
    "CPU_INTERVAL_S",
    "CPU_TARGET_PERCENT",
    "INFLATION_SHARE",
    "LAG_FLOOR_MS",
    "LAG_INTERVAL_S",
    "SATURATED_PERCENT",
    "WARMUP_S",
    "LagProbe",
    "LoadGeneratorMonitor",
    "ProcessFigures",
    "processes_needed",
]

LAG_INTERVAL_S = 0.02
CPU_INTERVAL_S = 2.0
INFLATION_SHARE = 0.03
LAG_FLOOR_MS = 2.0
CPU_TARGET_PERCENT = 50.0
_REPORT_KEY = "bagstress_load_generator"
_LOCAL = "local"
SATURATED_PERCENT = 90.0
WARMUP_S = 2.0


def threshold_ms(ttft_p50_ms: float | None) -> float | None:
    """The lag p99 above which a process's latency figures are inflated; None without a TTFT to compare."""
    if ttft_p50_ms is None:
        return None
    return max(INFLATION_SHARE * ttft_p50_ms, LAG_FLOOR_MS)


def processes_needed(lag_p99_ms: float, cpu_percent: float, threshold: float) -> int:
    """How many processes the load of one should be spread over, so that each one's lag p99 is under ``threshold``.

    With lag ∝ ρ/(1-ρ) for a CPU share ρ, the share that gives the threshold is ρ' with
    ρ'/(1-ρ') = ρ/(1-ρ) · threshold/lag, and the load must be divided by ρ/ρ'. A saturated
    process (``SATURATED_PERCENT``) no longer shows in its CPU how much more it was asked to do;
    its lag then grows with its backlog, and the load is divided by lag/threshold at least.
    """
    count = max(math.ceil(cpu_percent / CPU_TARGET_PERCENT), 1)
    if lag_p99_ms > threshold:
        if cpu_percent >= SATURATED_PERCENT:
            count = max(count, math.ceil(lag_p99_ms / threshold))
        else:
            rho = max(cpu_percent / 100, 0.01)
            odds = rho / (1 - rho) * threshold / lag_p99_ms
            count = max(count, math.ceil(rho / (odds / (1 + odds))))
    return count


class ProcessFigures:
    """What one process measured of itself: its scheduling lag (ms) and its highest CPU share (%)."""

    def __init__(self) -> None:
        self.lag = LogHistogram()
        self.cpu_max_percent = 0.0

    def merge(self, other: ProcessFigures) -> None:
        self.lag.merge(other.lag)
        self.cpu_max_percent = max(self.cpu_max_percent, other.cpu_max_percent)

    def judge(self, threshold: float | None) -> dict[str, Any]:
        lag_p99 = self.lag.quantile(0.99)
        inflated = threshold is not None and lag_p99 is not None and lag_p99 > threshold
        more = 0
        if inflated:
            assert lag_p99 is not None and threshold is not None
            more = max(processes_needed(lag_p99, self.cpu_max_percent, threshold) - 1, 1)
        return {
            "lag_p50_ms": _ms(self.lag.quantile(0.5)),
            "lag_p99_ms": _ms(lag_p99),
            "cpu_max_percent": round(self.cpu_max_percent, 1),
            "inflated": inflated,
            "more_processes": more,
            "saturated": self.cpu_max_percent >= SATURATED_PERCENT,
        }

    def to_dict(self) -> dict[str, Any]:
        return {"lag": self.lag.to_dict(), "cpu_max": self.cpu_max_percent}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProcessFigures:
        figures = cls()
        figures.lag = LogHistogram.from_dict(data["lag"])
        figures.cpu_max_percent = float(data["cpu_max"])
        return figures


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class LagProbe:
    """Measures this process's scheduling lag and CPU share into a ``ProcessFigures``.

    A native thread (not a greenlet: it must keep time while the event loop is busy) writes, every
    ``lag_interval_s``, the time at which it was due into a pipe; a greenlet waits on the pipe like
    any user waits on its socket, and records how long after that time it got to read it. A tick
    that the thread could only write late, because the process held the GIL, still carries its due
    time, so a long block yields one value per tick it spanned. Usable on its own: ``start()``,
    read ``figures`` (or ``take()`` them), ``stop()``.
    """

    def __init__(
        self, lag_interval_s: float = LAG_INTERVAL_S, cpu_interval_s: float = CPU_INTERVAL_S, warmup_s: float = 0.0
    ) -> None:
        self.figures = ProcessFigures()
        self._warmup_s = warmup_s
        self._lag_interval_s = lag_interval_s
        self._cpu_interval_s = cpu_interval_s
        self._process = psutil.Process()
        self._greenlet: gevent.Greenlet | None = None
        self._ticking: list[bool] | None = None  # the thread's "keep going", read without a lock (one bool)

    def start(self) -> None:
        if self._greenlet is not None:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)  # should the reader die, the thread drops ticks instead of hanging
        self._ticking = [True]
        _start_native_thread(_tick, (write_fd, self._lag_interval_s, self._ticking))
        self._greenlet = gevent.spawn(self._read, read_fd)

    def stop(self) -> None:
        if self._ticking is not None:
            self._ticking[0] = False  # the thread closes its end and ends at its next tick
            self._ticking = None
        if self._greenlet is not None:
            self._greenlet.kill(block=False)  # its ``finally`` closes the read end
            self._greenlet = None

    def take(self) -> ProcessFigures:
        """The figures so far; the probe starts afresh (a worker sends each batch once)."""
        figures, self.figures = self.figures, ProcessFigures()
        return figures

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _read(self, read_fd: int) -> None:
        perf_counter = time.perf_counter
        cpu_from, cpu_at = self._cpu_seconds(), perf_counter()
        counted_from = cpu_at + self._warmup_s
        pending = b""
        try:
            while True:
                gevent.socket.wait_read(read_fd)
                data = os.read(read_fd, 4096)
                if not data:
                    return
                now = perf_counter()
                pending += data
                whole = len(pending) - len(pending) % _TICK.size
                lag = self.figures.lag
                for (due,) in _TICK.iter_unpack(pending[:whole]):
                    if due >= counted_from:
                        lag.add(max(now - due, 0.0) * 1000)
                pending = pending[whole:]
                if now - cpu_at >= self._cpu_interval_s:
                    cpu = self._cpu_seconds()
                    share = (cpu - cpu_from) / (now - cpu_at) * 100
                    self.figures.cpu_max_percent = max(self.figures.cpu_max_percent, share)
                    cpu_from, cpu_at = cpu, now
        finally:
            os.close(read_fd)


_TICK = struct.Struct("d")
# The originals: under Locust, gevent has patched threads and ``time.sleep`` into greenlet versions.
_start_native_thread: Any = gevent.monkey.get_original("_thread", "start_new_thread")
_native_sleep: Any = gevent.monkey.get_original("time", "sleep")


def _tick(write_fd: int, interval: float, ticking: list[bool]) -> None:
    """The probe's clock, in a native thread: write each tick's due time, on schedule or as soon as it can."""
    perf_counter = time.perf_counter
    due = perf_counter() + interval
    try:
        while ticking[0]:
            _native_sleep(max(due - perf_counter(), 0.0))
            ticks = b""
            now = perf_counter()
            while due <= now:  # late (the GIL was held): every tick missed, each with its own due time
                ticks += _TICK.pack(due)
                due += interval
            with contextlib.suppress(OSError):  # a full pipe, or the reader stopped: nobody to tell
                os.write(write_fd, ticks)
    finally:
        os.close(write_fd)


class LoadGeneratorMonitor:
    """The self-check of a run: probes on the processes that run users, judgement where figures are reported."""

    def __init__(self) -> None:
        self.probe: LagProbe | None = None
        self.by_worker: dict[str, ProcessFigures] = {}  # on the master: what each worker reported

    # ---- public API -------------------------------------------------------------------------------

    def register(self, environment: Environment) -> None:
        """Probe this process if it runs users; on the master, collect what the workers report."""
        # Imported here, not above: the figures and the probe work without Locust (the bench's clients, tests).
        from locust.runners import LocalRunner, MasterRunner, WorkerRunner

        runner, events = environment.runner, environment.events
        if isinstance(runner, MasterRunner):
            events.worker_report.add_listener(self._on_worker_report)
            events.reset_stats.add_listener(lambda **_: self.by_worker.clear())
            return
        if not isinstance(runner, (LocalRunner, WorkerRunner)):
            return
        self.probe = LagProbe(warmup_s=WARMUP_S)
        events.test_start.add_listener(self._on_test_start)
        # From the moment the run stops: stopping users and writing reports are not load.
        events.test_stopping.add_listener(self._on_test_stop)
        events.test_stop.add_listener(self._on_test_stop)
        events.quitting.add_listener(self._on_test_stop)
        events.reset_stats.add_listener(self._on_reset_stats)
        if isinstance(runner, WorkerRunner):
            events.report_to_master.add_listener(self._on_report_to_master)

    def figures(self) -> dict[str, ProcessFigures]:
        """Per process: the workers' figures on a master, this process's own (as ``local``) otherwise."""
        if self.probe is not None:
            return {_LOCAL: self.probe.figures}
        return dict(self.by_worker)

    def summary(self, ttft_p50_ms: float | None) -> dict[str, Any]:
        """The ``load_generator`` key of the summary: overall, then per worker."""
        threshold = threshold_ms(ttft_p50_ms)
        per_process = self.figures()
        workers = {name: figures.judge(threshold) for name, figures in sorted(per_process.items())}
        overall = ProcessFigures()
        for figures in per_process.values():
            overall.merge(figures)
        lag_p99 = overall.lag.quantile(0.99)
        return {
            "lag_p99_ms": _ms(lag_p99),
            "cpu_max_percent": round(overall.cpu_max_percent, 1),
            "inflated": any(worker["inflated"] for worker in workers.values()),
            "threshold_ms": _ms(threshold),
            "more_processes": sum(worker["more_processes"] for worker in workers.values()),
            "workers": workers,
        }

    def warnings(self, ttft_p50_ms: float | None) -> list[str]:
        """One line per inflated process: by how much, and how many more processes its users need."""
        report = self.summary(ttft_p50_ms)
        lines = []
        for name, worker in report["workers"].items():
            if not worker["inflated"]:
                continue
            more = worker["more_processes"]
            at_least = "at least " if worker["saturated"] else ""
            if name == _LOCAL:
                who, advice = "this process", f"run with --processes {more + 1}, or on more machines"
            else:
                who, advice = f"worker {name}", f"add {at_least}{more} more worker(s) for the same users"
            lines.append(
                f"Latency figures are inflated by the load generator: {who} answers its sockets "
                f"{worker['lag_p99_ms']:.1f} ms late at p99 (limit {report['threshold_ms']:.1f} ms, "
                f"{INFLATION_SHARE:.0%} of TTFT p50) at up to {worker['cpu_max_percent']:.0f}% CPU. "
                f"Spread its users over {at_least}{more} more process(es): {advice}."
            )
        return lines

    # ---- event handlers ---------------------------------------------------------------------------

    def _on_test_start(self, **_: Any) -> None:
        if self.probe is not None:
            # What exists now (modules, conversations, the engine) lives as long as the process. Out of the
            # collector's reach, it no longer turns a full collection into a pause: measured at 500 users,
            # one pause of 90 ms in a 15 s run, and a TTFT p99 error of +47% instead of +7%.
            gc.freeze()
            # Locust's Runner.stop() logs its caller with inspect.stack(), whose first call maps every
            # loaded module to its file: a block of ~60 ms with LangChain loaded, which every message
            # still streaming at the end of a run would take for server time. Mapped now, before users start.
            inspect.getmodule(inspect.currentframe())
            self.probe.start()

    def _on_test_stop(self, **_: Any) -> None:
        if self.probe is not None:
            self.probe.stop()

    def _on_reset_stats(self, **_: Any) -> None:
        if self.probe is not None:
            self.probe.take()

    def _on_report_to_master(self, client_id: str, data: dict[str, Any]) -> None:
        # What was measured since the last report, then afresh: the master adds the batches up.
        if self.probe is not None:
            data[_REPORT_KEY] = self.probe.take().to_dict()

    def _on_worker_report(self, client_id: str, data: dict[str, Any]) -> None:
        if _REPORT_KEY in data:
            self.by_worker.setdefault(client_id, ProcessFigures()).merge(ProcessFigures.from_dict(data[_REPORT_KEY]))
