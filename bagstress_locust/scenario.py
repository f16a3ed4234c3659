"""What every user of one process shares during a test run: settings, conversations, client, models."""

from __future__ import annotations

import random
from weakref import WeakKeyDictionary

from gevent.lock import Semaphore
from locust.env import Environment

from .client import ChatClient
from .conversations import Conversation, load_conversations
from .endpoint import fetch_models
from .message import ChatEngine
from .metrics import LLMMetrics
from .models import eligible_models
from .options import Settings

__all__ = ["Scenario"]

_active: WeakKeyDictionary[Environment, Scenario] = WeakKeyDictionary()


class Scenario:
    """Built once per process at test start; users find it with ``Scenario.find(environment)``."""

    def __init__(
        self,
        environment: Environment,
        settings: Settings,
        conversations: list[Conversation],
        client: ChatEngine,
        metrics: LLMMetrics,
    ) -> None:
        self.environment = environment
        self.settings = settings
        self.conversations = conversations
        self.client = client
        self.metrics = metrics
        self._models: list[str] | None = None
        self._models_lock = Semaphore()

    @classmethod
    def start(cls, environment: Environment, metrics: LLMMetrics, models: list[str] | None = None) -> Scenario:
        """Read the options, load the conversations and open the client for this process.

        ``models``: the eligible models if this process has already listed them (the start-up probe).
        """
        settings = Settings.from_environment(environment)
        conversations = load_conversations(settings.conversations_dir)
        if not environment.host:
            raise ValueError("no endpoint: set --host to the OpenAI base URL, /v1 included")
        engine = _engine_class(settings.client_engine)
        client = engine(
            environment.host,
            settings,
            environment.events.request,
            client_id=getattr(environment.runner, "client_id", "local"),
        )
        scenario = cls(environment, settings, conversations, client, metrics)
        scenario._models = models
        previous = _active.get(environment)
        if previous is not None:
            previous.close()
        _active[environment] = scenario
        return scenario

    @classmethod
    def find(cls, environment: Environment) -> Scenario | None:
        """This process's scenario, or None when the run could not start (the reason was logged)."""
        return _active.get(environment)

    @classmethod
    def stop(cls, environment: Environment) -> None:
        scenario = _active.pop(environment, None)
        if scenario is not None:
            scenario.close()

    def close(self) -> None:
        self.client.close()

    def choose_model(self, rng: random.Random) -> str:
        """The fixed model, or a random one of the endpoint's list minus the filter (fetched once)."""
        if self.settings.model:
            return self.settings.model
        if self._models is None:
            with self._models_lock:
                if self._models is None:
                    listed = fetch_models(
                        self.client.base_url,
                        self.settings.api_key,
                        self.environment.events.request,
                        self.settings.connect_timeout + self.settings.read_timeout,
                    )
                    self._models = eligible_models(listed, self.settings.excluded_models())
        return rng.choice(self._models)


def _engine_class(name: str) -> type[ChatEngine]:
    """The engine's class. LangChain is imported with this module, not here: its ~1.5 s import
    would otherwise eat into Locust's --run-time, which is already counting at test start."""
    if name == "fast":
        from .fast_client import FastChatClient

        return FastChatClient
    return ChatClient
