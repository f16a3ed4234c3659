"""Command-line options, their ``LOCUST_*`` environment variables, and the ``.env`` file.

Every option is registered on Locust's own parser, so it appears in ``locust --help`` under one
heading, in Locust config files, as ``LOCUST_<NAME>`` in the environment and in the web UI's start
form. The seed tool's ``.env`` names still work: ``OPENAI_API_BASE`` (used when ``--host`` is not
given), ``OPENAI_API_KEY``, ``MODEL_NAME``, ``TEMPERATURE`` (fixes the temperature) and
``MAX_TOKENS``. The API key is read from ``OPENAI_API_KEY`` at test start, or typed into the web
UI's masked ``--api-key`` field. That field never takes a value from the command line or a config
file (``check_no_key_option``): Locust sends every option's value to the browser as its default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from locust.argument_parser import LocustArgumentParser
from locust.env import Environment

from dotenv import find_dotenv, load_dotenv

from .models import read_model_filter

__all__ = ["Settings", "add_arguments", "check_no_key_option", "load_dotenv_file"]


@dataclass(frozen=True)
class Settings:
    """The options one process runs with, read from ``environment.parsed_options`` at test start."""

    conversations_dir: str = "conversations"
    model: str | None = None
    model_filter: str = "model_filter.txt"
    temp_min: float = 0.5
    temp_max: float = 1.0
    max_tokens: int | None = None
    max_messages: int | None = None
    cut_probability: float = 0.2
    think_time_scale: float = 1.0
    typing_speed: float = 20.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    max_retries: int = 0
    client_engine: str = "langchain"
    api_key: str | None = None

    @classmethod
    def from_environment(cls, environment: Environment) -> Settings:
        options = environment.parsed_options
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            if options is not None and hasattr(options, name):
                values[name] = _coerce(getattr(options, name), str(spec.type), name)
        # A key typed into the web UI's form wins over the environment's.
        values["api_key"] = values.get("api_key") or os.environ.get("OPENAI_API_KEY") or None
        settings = cls(**values)
        settings.validate()
        return settings

    def excluded_models(self) -> set[str]:
        """The names in --model-filter; a missing default file means no filter, a named file must exist."""
        return read_model_filter(self.model_filter, required=self.model_filter != Settings.model_filter)

    def validate(self) -> None:
        """Reject contradictory values with a message that names the option."""
        if not 0 <= self.temp_min <= self.temp_max <= 2:
            raise ValueError(
                f"--temp-min {self.temp_min} and --temp-max {self.temp_max} must satisfy 0 <= min <= max <= 2"
            )
        if not 0 <= self.cut_probability <= 1:
            raise ValueError(f"--cut-probability {self.cut_probability} must be between 0 and 1")
        for name in ("max_tokens", "max_messages"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value} must be at least 1 (leave it unset for no limit)")
        if self.typing_speed <= 0:
            raise ValueError(f"--typing-speed {self.typing_speed} must be positive (characters per second)")


def _coerce(value: Any, type_name: str, name: str) -> Any:
    """Options left unset (None) come back from the web UI's form as strings; give them their type."""
    if not isinstance(value, str) or type_name.startswith("str"):
        return value
    if not value.strip():
        return None
    try:
        return (float if type_name.startswith("float") else int)(value)
    except ValueError:
        raise ValueError(f"--{name.replace('_', '-')} {value!r} is not a number") from None


def check_no_key_option(environment: Environment) -> None:
    """At start-up: ``--api-key`` is for the web form only, never from the command line or a config file."""
    if getattr(environment.parsed_options, "api_key", None):
        raise ValueError(
            "--api-key is only for the web UI's form: Locust shows every option given on the command line or "
            "in a config file to each browser. Set OPENAI_API_KEY in the environment or .env instead"
        )


def load_dotenv_file() -> None:
    """Load ``.env`` from the working directory; variables already set in the environment win."""
    load_dotenv(find_dotenv(usecwd=True), override=False)


def _positive_int_or_none(value: str) -> int | None:
    return int(value) if value.strip() else None


def add_arguments(parser: LocustArgumentParser) -> None:
    """Register the options under one heading; ``.env`` must already be loaded (defaults read it)."""
    group = parser.add_argument_group(
        "bagstress-locust",
        "Replay scripted chats against an OpenAI-compatible endpoint. --host is the base URL, /v1 included; "
        "without --host or OPENAI_API_BASE a built-in simulated server is started.",
    )
    env_temperature = os.environ.get("TEMPERATURE")
    env_max_tokens = os.environ.get("MAX_TOKENS")

    def add(*args: Any, is_secret: bool = False, **kwargs: Any) -> None:
        # Argument groups use argparse's add_argument; Locust reads the web-UI flags off the action.
        action = group.add_argument(*args, **kwargs)
        action.include_in_web_ui = True
        action.is_secret = is_secret
        action.is_required = False
        action.is_multiple = False

    add(
        "--api-key",
        default=None,
        is_secret=True,
        help="Web UI form only (masked): the API key for this run. Elsewhere set OPENAI_API_KEY (environment "
        "or .env); given here on the command line it would be shown to every browser.",
    )

    add(
        "--conversations-dir",
        default="conversations",
        env_var="LOCUST_CONVERSATIONS_DIR",
        help="Folder of *.json conversations to replay. Default: %(default)s",
    )
    add(
        "--model",
        default=os.environ.get("MODEL_NAME") or None,
        env_var="LOCUST_MODEL",
        help="Use this model for every message (MODEL_NAME in .env). Default: a random model from GET /models.",
    )
    add(
        "--model-filter",
        default="model_filter.txt",
        env_var="LOCUST_MODEL_FILTER",
        help="File of model names to leave out of the random choice, one a line, # comments. Default: %(default)s",
    )
    add(
        "--temp-min",
        type=float,
        default=float(env_temperature) if env_temperature else 0.5,
        env_var="LOCUST_TEMP_MIN",
        help="Lowest random temperature (TEMPERATURE in .env fixes both ends). Default: %(default)s",
    )
    add(
        "--temp-max",
        type=float,
        default=float(env_temperature) if env_temperature else 1.0,
        env_var="LOCUST_TEMP_MAX",
        help="Highest random temperature. Default: %(default)s",
    )
    add(
        "--max-tokens",
        type=_positive_int_or_none,
        default=int(env_max_tokens) if env_max_tokens else None,
        env_var="LOCUST_MAX_TOKENS",
        help="Cap on tokens per reply (MAX_TOKENS in .env). Default: no limit, as real users get.",
    )
    add(
        "--max-messages",
        type=_positive_int_or_none,
        default=None,
        env_var="LOCUST_MAX_MESSAGES",
        help="Send at most this many user messages per conversation. Default: all of them.",
    )
    add(
        "--cut-probability",
        type=float,
        default=0.2,
        env_var="LOCUST_CUT_PROBABILITY",
        help="Chance that a conversation is cut to its first 1-3 user messages. Default: %(default)s",
    )
    add(
        "--think-time-scale",
        type=float,
        default=1.0,
        env_var="LOCUST_THINK_TIME_SCALE",
        help="Multiplier on the typing pause between messages; 0 sends the next message at once. Default: %(default)s",
    )
    add(
        "--typing-speed",
        type=float,
        default=20.0,
        env_var="LOCUST_TYPING_SPEED",
        help="Characters per second a simulated person types; the pause is bounded to 1-15 s. Default: %(default)s",
    )
    add(
        "--connect-timeout",
        type=float,
        default=10.0,
        env_var="LOCUST_CONNECT_TIMEOUT",
        help="Seconds to wait for a connection. Default: %(default)s",
    )
    add(
        "--read-timeout",
        type=float,
        default=60.0,
        env_var="LOCUST_READ_TIMEOUT",
        help="Seconds to wait for the next bytes of a reply (a stalled stream fails after this). Default: %(default)s",
    )
    add(
        "--max-retries",
        type=int,
        default=0,
        env_var="LOCUST_MAX_RETRIES",
        help="Retries of a failed message (429, 5xx, connection errors); each attempt is its own request in the "
        "stats. Default: 0.",
    )
    add(
        "--client-engine",
        choices=["langchain", "fast"],
        default="langchain",
        env_var="LOCUST_CLIENT_ENGINE",
        help="langchain: LangChain's ChatOpenAI (default); fast: a lean SSE client on Locust's FastHttpSession, "
        "same figures at far higher load per core.",
    )
    add(
        "--summary-json",
        default=None,
        env_var="LOCUST_SUMMARY_JSON",
        help="Write the final LLM summary to this JSON file (keys documented in the README).",
    )
    simulated = parser.add_argument_group(
        "bagstress-locust built-in simulator",
        "Timing of the simulated endpoint started when neither --host nor OPENAI_API_BASE is set.",
    )
    simulated.add_argument(
        "--sim-ttft",
        type=float,
        default=0.3,
        env_var="LOCUST_SIM_TTFT",
        help="Seconds to the first token. Default: %(default)s",
    )
    simulated.add_argument(
        "--sim-itl",
        type=float,
        default=0.03,
        env_var="LOCUST_SIM_ITL",
        help="Seconds between tokens. Default: %(default)s",
    )
    simulated.add_argument(
        "--sim-output-tokens",
        type=int,
        default=60,
        env_var="LOCUST_SIM_OUTPUT_TOKENS",
        help="Tokens in every reply. Default: %(default)s",
    )
