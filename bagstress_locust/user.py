"""The Locust user: one simulated person replaying scripted conversations, one message per task run.

Each task run sends one message, and ``wait_time`` is the typing pause before the next one, so
Locust's own stopping rules apply: a user that is typing stops at once, a user waiting for a
reply finishes it first (within ``--stop-timeout``), and no message is cut off and miscounted.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

from gevent import GreenletExit
from locust import User, task
from locust.exception import StopUser

from .conversations import Conversation, Turn, plan_turns, think_time
from .failures import MessageFailed
from .models import NoModelsError
from .scenario import Scenario

__all__ = ["ConversationUser"]

logger = logging.getLogger(__name__)


def retryable(reason: str | None) -> bool:
    """Worth another attempt: anything but a client error (4xx) other than 429 Too Many Requests."""
    return reason is not None and (not reason.startswith("HTTP 4") or reason.startswith("HTTP 429"))


class ConversationUser(User):
    """Replays random conversations against an OpenAI-compatible endpoint; subclass it in a locustfile."""

    abstract = True

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]  # Locust's own signature
        super().__init__(*args, **kwargs)
        self.rng = random.Random()
        self._turns: Iterator[Turn] | None = None
        self._conversation: Conversation | None = None
        self._model = ""
        self._temperature = 0.0
        self._pause = 0.0
        self._think_time_s = 0.0
        self._messages_sent = 0

    def wait_time(self) -> float:
        """The typing pause before the next message (none before a conversation's first)."""
        return self._pause

    @task
    def send_next_message(self) -> None:
        """Send the next user message of the current conversation, starting a new one if needed."""
        scenario = Scenario.find(self.environment)
        if scenario is None:  # the run could not start (already said why, once): nothing to send
            raise StopUser()
        if self._turns is None and not self._begin_conversation(scenario):
            return
        assert self._turns is not None
        turn = next(self._turns)  # a plan has at least one turn, and the last one ends the conversation
        settings = scenario.settings
        try:
            result = scenario.client.send(turn.request, self._model, self._temperature)
            for _ in range(settings.max_retries):
                if result.succeeded or not retryable(result.error):
                    break
                result = scenario.client.send(turn.request, self._model, self._temperature)
            self._messages_sent += 1
        except GreenletExit:
            # The run stopped while the reply streamed: not the server's failure, and not a message.
            scenario.metrics.record_cancelled()
            raise
        if not result.succeeded:
            self._end_conversation(scenario, succeeded=False)
            self._pause = think_time("", settings.typing_speed, settings.think_time_scale)
        elif turn.next_user_message is None:
            self._end_conversation(scenario, succeeded=True)
            self._pause = 0.0
        else:
            self._pause = think_time(turn.next_user_message, settings.typing_speed, settings.think_time_scale)
            self._think_time_s += self._pause

    def _begin_conversation(self, scenario: Scenario) -> bool:
        settings = scenario.settings
        try:
            self._model = scenario.choose_model(self.rng)
        except (MessageFailed, NoModelsError, FileNotFoundError) as error:
            # A failed "GET /models" is already a reported request; the others need saying. Retry after a pause.
            if not isinstance(error, MessageFailed):
                logger.error("%s", error)
            self._pause = think_time("", settings.typing_speed, settings.think_time_scale)
            return False
        self._conversation = self.rng.choice(scenario.conversations)
        # To 0.01: a finer temperature changes nothing in a reply, and the request stays readable.
        self._temperature = round(self.rng.uniform(settings.temp_min, settings.temp_max), 2)
        self._turns = plan_turns(self._conversation, self.rng, settings.cut_probability, settings.max_messages)
        return True

    def _end_conversation(self, scenario: Scenario, succeeded: bool) -> None:
        scenario.metrics.record_conversation(succeeded, self._messages_sent, self._think_time_s)
        self._turns = None
        self._conversation = None
        self._think_time_s = 0.0
        self._messages_sent = 0
