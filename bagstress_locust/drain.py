"""Workers' last figures reach the master before it reports: nothing finished is lost at the end.

When a distributed run ends on the master (``-t``, Ctrl-C, the stop button), Locust sends its
workers ``quit`` (or ``stop``) and waits 0.5 s for their final reports. A worker first lets its
in-flight messages finish (``--stop-timeout``), and LLM replies take seconds, so its last report
came too late: messages the server had served were missing from the master's figures and from
Locust's own. Here the master asks every worker, as the run starts stopping, to stop its users,
report, and confirm; it waits for each confirmation (or ``--stop-timeout`` plus a margin, for a
worker that died) before Locust goes on stopping.
"""

from __future__ import annotations

from typing import Any

from gevent.event import Event
from locust.env import Environment
from locust.runners import STATE_MISSING, MasterRunner, WorkerRunner

__all__ = ["FinalReports"]

_DRAIN = "bagstress_drain"
_DRAINED = "bagstress_drained"
_MARGIN_S = 10.0  # beyond --stop-timeout: time for a worker to report once its users have stopped


class FinalReports:
    """Registers the master's wait and the workers' answer; a local run needs neither."""

    def __init__(self) -> None:
        self._waiting_for: set[str] = set()
        self._all_reported = Event()

    def register(self, environment: Environment) -> None:
        runner = environment.runner
        if isinstance(runner, MasterRunner):
            runner.register_message(_DRAINED, self._on_drained)
            environment.events.test_stopping.add_listener(lambda **_: self._drain_workers(environment, runner))
        elif isinstance(runner, WorkerRunner):
            # Its own greenlet: stopping users can take --stop-timeout, messages must keep flowing.
            runner.register_message(_DRAIN, self._on_drain, concurrent=True)

    # ---- master ---------------------------------------------------------------------------------------

    def _drain_workers(self, environment: Environment, runner: MasterRunner) -> None:
        workers = [worker for worker in runner.clients.all if worker.state != STATE_MISSING]
        if not workers:
            return
        self._waiting_for = {worker.id for worker in workers}
        self._all_reported.clear()
        for worker in workers:
            runner.send_message(_DRAIN, None, worker.id)
        self._all_reported.wait(timeout=(environment.stop_timeout or 0) + _MARGIN_S)

    def _on_drained(self, environment: Environment, msg: Any, **_: Any) -> None:
        self._waiting_for.discard(msg.node_id)
        if not self._waiting_for:
            self._all_reported.set()

    # ---- worker ---------------------------------------------------------------------------------------

    def _on_drain(self, environment: Environment, msg: Any, **_: Any) -> None:
        runner = environment.runner
        assert isinstance(runner, WorkerRunner)
        runner.stop()  # graceful: in-flight messages finish within --stop-timeout
        # The report goes out before the confirmation, on the same connection, so it is merged first.
        runner._send_stats()  # Locust's own report (its stats and ours), sent now rather than in 3 s
        runner.send_message(_DRAINED)
