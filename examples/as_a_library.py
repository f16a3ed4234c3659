"""Run bagstress-locust from Python, with Locust as a library, and read the LLM figures.

    uv run python examples/as_a_library.py http://127.0.0.1:8000/v1

Prints the summary (the keys of --summary-json) as JSON.
"""

import json
import sys

import gevent
from locust import events
from locust.argument_parser import get_parser
from locust.env import Environment

import bagstress_locust
from bagstress_locust.report import summary

plugin = bagstress_locust.register(events)


class ChatUser(bagstress_locust.ConversationUser):
    pass


def main(base_url: str, seconds: float = 3, users: int = 3) -> dict:
    # Locust's own parser, with our options on it (registered above): the same settings as the CLI.
    options = get_parser().parse_args(["--host", base_url, "--think-time-scale", "0", "--stop-timeout", "10"])
    environment = Environment(
        user_classes=[ChatUser], events=events, host=base_url, parsed_options=options, stop_timeout=options.stop_timeout
    )
    runner = environment.create_local_runner()
    events.init.fire(environment=environment, runner=runner, web_ui=None)
    runner.start(users, spawn_rate=users)
    gevent.spawn_later(seconds, runner.quit)
    runner.greenlet.join()
    return summary(plugin.metrics, plugin.monitor)  # with the self-check's verdict, as --summary-json


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
