"""Wires bagstress-locust into Locust's events: options, the embedded endpoint, per-run set-up.

A locustfile calls ``register(events)`` once, at import, because Locust parses the command
line right after importing it; everything else happens in Locust's own hooks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import gevent
import locust.stats
from locust.env import Environment
from locust.event import Events
from locust.runners import STATE_RUNNING, STATE_SPAWNING, MasterRunner, Runner, WorkerRunner

from .conversations import ConversationError, fingerprint, load_conversations
from .drain import FinalReports
from .embedded import EmbeddedSimulator
from .endpoint import EndpointError, check_endpoint
from .metrics import LLMMetrics
from .options import Settings, add_arguments, check_no_key_option, load_dotenv_file
from .report import HistoryRecorder, format_summary, format_table, summary, write_csv, write_json
from .scenario import Scenario
from .selfcheck import LoadGeneratorMonitor
from .webui import register_web_ui

__all__ = ["BagstressPlugin", "register"]

logger = logging.getLogger("bagstress_locust")
# Locust's own logger for its stats tables: plain lines on the console, beside its tables.
stats_console = logging.getLogger("locust.stats_logger")
_CHATTY_LOGGERS = ("httpx2", "httpcore2", "openai")
_WORKER_ERROR = "bagstress_worker_error"


class BagstressPlugin:
    """Listeners for one Locust process; ``quitting`` cleans up and may run more than once."""

    def __init__(self) -> None:
        self.simulator: EmbeddedSimulator | None = None
        self.metrics = LLMMetrics()
        self.monitor = LoadGeneratorMonitor()  # is this process distorting what it measures?
        self.history = HistoryRecorder()
        self.final_reports = FinalReports()  # workers' last figures reach the master before it reports
        self._ticker: gevent.Greenlet | None = None

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
        self.metrics.register(environment)
        self.monitor.register(environment)
        self.final_reports.register(environment)
        if isinstance(runner, MasterRunner):
            runner.register_message(_WORKER_ERROR, self._on_worker_error)
        if isinstance(runner, WorkerRunner) or environment.parsed_options is None:
            return
        self._check_options(environment)
        self._choose_endpoint(environment, runner)
        register_web_ui(environment, self.metrics, self.history, self.monitor)  # the LLM tab; the --html file's section
        environment.events.reset_stats.add_listener(lambda **_: self.history.clear())
        # gevent timers count from the loop's cached clock, last read before Locust imported the
        # locustfile (and LangChain with it, ~1.5 s): without a fresh reading, the --run-time timer
        # Locust sets next would end the run that much early.
        gevent.get_hub().loop.update_now()
        # Locust's "quit" comes after its own final tables, so our summary is the last thing printed.
        environment.events.quit.add_listener(lambda **_: self._report(environment))
        self._ticker = gevent.spawn(self._tick, environment)

    def _check_options(self, environment: Environment) -> None:
        """Fail fast, before any user starts, with every problem listed."""
        try:
            check_no_key_option(environment)
            Settings.from_environment(environment)
            load_conversations(_options(environment).conversations_dir)
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
        options = _options(environment)
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
        runner = environment.runner
        try:
            models = None
            if not isinstance(runner, WorkerRunner):
                # Once per run, before any user starts: an endpoint that cannot serve it is one clear line.
                settings = Settings.from_environment(environment)
                models = check_endpoint(
                    environment.host or "",
                    settings.model,
                    settings.excluded_models(),
                    settings.api_key,
                    environment.events.request,
                    settings.connect_timeout + settings.read_timeout,
                )
            if isinstance(runner, MasterRunner):
                # Sent to the workers with the options: each checks that its own copy is the same.
                options = _options(environment)
                conversations = load_conversations(options.conversations_dir)
                options.conversations_fingerprint = fingerprint(conversations)
                return
            scenario = Scenario.start(environment, self.metrics, models)
            expected = getattr(environment.parsed_options, "conversations_fingerprint", None)
            if isinstance(runner, WorkerRunner) and expected and expected != fingerprint(scenario.conversations):
                raise ConversationError(
                    [
                        f"{scenario.settings.conversations_dir}: this worker's conversations differ from the "
                        "master's; give every worker the same files (compose mounts, or copy the folder)"
                    ]
                )
        except (ConversationError, EndpointError, ValueError, FileNotFoundError) as error:
            self._fail(environment, f"cannot start the test: {error}")

    def _fail(self, environment: Environment, message: str) -> None:
        """Say why in one line (on the master too, for a worker); headless, end with exit code 1.

        With the web UI the run stops instead, so the form can be corrected and the run started again.
        """
        logger.error("%s", message)
        runner = environment.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(_WORKER_ERROR, {"message": message})
        if runner is None:
            return
        # Without parsed options Locust runs as a library: nobody is at a form to fix anything.
        if getattr(environment.parsed_options, "headless", True) or isinstance(runner, WorkerRunner):
            environment.process_exit_code = 1
            gevent.spawn(runner.quit)
        else:
            gevent.spawn(runner.stop)

    def _on_worker_error(self, environment: Environment, msg: Any, **_: Any) -> None:
        logger.error("worker %s: %s", msg.node_id, msg.data["message"])
        environment.process_exit_code = 1

    def _on_test_stop(self, environment: Environment, **_: Any) -> None:
        Scenario.stop(environment)

    def _on_quitting(self, environment: Environment, **_: Any) -> None:
        runner = environment.runner
        if runner is not None and runner.state in (STATE_SPAWNING, STATE_RUNNING):
            # Ctrl-C: Locust fires "quitting" before it stops the users. Stop them first (in-flight
            # messages become "cancelled"), or closing the client below would break their streams
            # and blame the server for it.
            runner.stop()
        options = environment.parsed_options
        if getattr(options, "csv_prefix", None) and not isinstance(runner, WorkerRunner):
            # Locust rewrites its --csv files every CSV_STATS_INTERVAL_SEC but not at shutdown, so the
            # last interval (and messages finished during --stop-timeout) went missing (locust #1806,
            # #2299). Users have stopped by now; one more interval lets its writer record the final totals.
            gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)
        Scenario.stop(environment)
        if self._ticker is not None:
            self._ticker.kill(block=False)
            self._ticker = None
        if self.simulator is not None:
            self.simulator.stop()
            self.simulator = None

    # ---- reporting (master or local process) --------------------------------------------------------

    def _tick(self, environment: Environment) -> None:
        """Every console interval while a test runs: a history row and, headless, the LLM table."""
        options = _options(environment)
        print_table = options.headless and not options.only_summary
        while True:
            gevent.sleep(locust.stats.CONSOLE_STATS_INTERVAL_SEC)
            if self.metrics.started_at is None or self.metrics.stopped_at is not None:
                continue
            user_count = environment.runner.user_count if environment.runner else 0
            self.history.sample(self.metrics, user_count)
            if print_table:
                stats_console.info(format_table(self.metrics) + "\n")
                for line in self.monitor.warnings(self.metrics.total.timings["ttft"].quantile(0.5)):
                    logger.warning("%s", line)

    def _report(self, environment: Environment) -> None:
        """The final summary on the console, and the JSON and CSV files if asked for."""
        options = _options(environment)
        report = summary(self.metrics, self.monitor)
        stats_console.info(format_summary(report))
        for line in self.monitor.warnings(report["ttft_ms"]["p50"]):
            logger.warning("%s", line)
        if options.summary_json:
            write_json(report, options.summary_json)
        if options.csv_prefix:
            write_csv(report, self.metrics, self.history, options.csv_prefix)


def _options(environment: Environment) -> argparse.Namespace:
    """The parsed command line; only called where Locust has one (``_on_init`` checked)."""
    options = environment.parsed_options
    assert isinstance(options, argparse.Namespace)
    return options


def register(events: Events) -> BagstressPlugin:
    """Add bagstress-locust's options and listeners to Locust's ``events``; call once per locustfile."""
    plugin = BagstressPlugin()
    plugin.register(events)
    return plugin
