"""Wires bagstress-locust into Locust's events: options, the embedded endpoint, per-run set-up.

A locustfile calls ``register(events)`` once, at import, because Locust parses the command
line right after importing it; everything else happens in Locust's own hooks.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import gevent
import locust.stats
from locust.env import Environment
from locust.event import Events
from locust.runners import MasterRunner, Runner, WorkerRunner

from .conversations import ConversationError, load_conversations
from .embedded import EmbeddedSimulator
from .options import Settings, add_arguments, load_dotenv_file
from .scenario import Scenario

__all__ = ["BagstressPlugin", "register"]

logger = logging.getLogger("bagstress_locust")
_CHATTY_LOGGERS = ("httpx2", "httpcore2", "openai")


class BagstressPlugin:
    """Listeners for one Locust process; ``quitting`` cleans up and may run more than once."""

    def __init__(self) -> None:
        self.simulator: EmbeddedSimulator | None = None

    def register(self, events: Events) -> None:
        events.init_command_line_parser.add_listener(self._on_command_line_parser)
        events.init.add_listener(self._on_init)
        events.test_start.add_listener(self._on_test_start)
        events.test_stop.add_listener(self._on_test_stop)
        events.quitting.add_listener(self._on_quitting)

    # ---- event handlers -------------------------------------------------------------------------

    def _on_command_line_parser(self, parser: Any, **_: Any) -> None:
        load_dotenv_file()
        add_arguments(parser)

    def _on_init(self, environment: Environment, runner: Runner | None = None, **_: Any) -> None:
        # The HTTP client logs every request at INFO: a line per message floods the console and costs CPU.
        for name in _CHATTY_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        if isinstance(runner, WorkerRunner) or environment.parsed_options is None:
            return
        self._check_options(environment)
        self._choose_endpoint(environment, runner)

    def _check_options(self, environment: Environment) -> None:
        """Fail fast, before any user starts, with every problem listed."""
        try:
            Settings.from_environment(environment)
            load_conversations(environment.parsed_options.conversations_dir)
        except (ConversationError, ValueError) as error:
            logger.error("%s", error)
            sys.exit(1)

    def _choose_endpoint(self, environment: Environment, runner: Runner | None) -> None:
        """--host wins, then OPENAI_API_BASE; with neither, start the built-in simulator."""
        if environment.host:
            return
        base_url = os.environ.get("OPENAI_API_BASE")
        if base_url:
            environment.host = base_url
            return
        options = environment.parsed_options
        timing = ["--ttft", str(options.sim_ttft), "--itl", str(options.sim_itl)]
        self.simulator = EmbeddedSimulator([*timing, "--output-tokens", str(options.sim_output_tokens)])
        environment.host = self.simulator.start()
        where = "master" if isinstance(runner, MasterRunner) else "this process"
        logger.info(
            "No endpoint configured: load testing the built-in simulated server at %s (started by %s). "
            "For a real endpoint pass --host http://HOST:PORT/v1 or set OPENAI_API_BASE, and OPENAI_API_KEY.",
            environment.host,
            where,
        )

    def _on_test_start(self, environment: Environment, **_: Any) -> None:
        if isinstance(environment.runner, MasterRunner):
            return
        try:
            Scenario.start(environment)
        except (ConversationError, ValueError, FileNotFoundError) as error:
            logger.error("cannot start the test: %s", error)
            environment.process_exit_code = 1
            runner = environment.runner
            if runner is not None:
                gevent.spawn(runner.quit)

    def _on_test_stop(self, environment: Environment, **_: Any) -> None:
        Scenario.stop(environment)

    def _on_quitting(self, environment: Environment, **_: Any) -> None:
        options = environment.parsed_options
        if getattr(options, "csv_prefix", None) and not isinstance(environment.runner, WorkerRunner):
            # Locust rewrites its --csv files every CSV_STATS_INTERVAL_SEC but not at shutdown, so the
            # last interval (and messages finished during --stop-timeout) went missing (locust #1806,
            # #2299). Users have stopped by now; one more interval lets its writer record the final totals.
            gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)
        Scenario.stop(environment)
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None


def register(events: Events) -> BagstressPlugin:
    """Add bagstress-locust's options and listeners to Locust's ``events``; call once per locustfile."""
    plugin = BagstressPlugin()
    plugin.register(events)
    return plugin
