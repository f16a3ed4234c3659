"""Scripted conversations: loading, validation and the replay plan.

A conversation file is UTF-8 JSON::

    {"conversation_id": "conv_01",
     "messages": [{"role": "system", "content": "..."},      # optional, first
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."},  # the scripted reply
                  ...]}

Every file in a directory is validated once, and all problems of all files are reported
together, each with its file and message index, so a user fixes a set in one pass.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Conversation",
    "ConversationError",
    "Message",
    "Turn",
    "fingerprint",
    "load_conversations",
    "plan_turns",
    "think_time",
]

Message = dict[str, str]
_ROLES = ("system", "user", "assistant")

# Think time bounds, in seconds before --think-time-scale is applied: people take a moment
# even for "ok", and nobody types for minutes in a load test.
THINK_TIME_MIN_S = 1.0
THINK_TIME_MAX_S = 15.0


class ConversationError(ValueError):
    """One or more conversation files are invalid; ``problems`` lists each as ``file: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid conversations:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Conversation:
    """A validated scripted chat: an optional system prompt and alternating user/assistant messages."""

    conversation_id: str
    messages: tuple[Message, ...]
    source: str

    @property
    def user_turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "user")


@dataclass(frozen=True)
class Turn:
    """One message to send: the full request history, the scripted reply, and the next user message."""

    request: list[Message]
    scripted_reply: Message | None
    next_user_message: str | None


def load_conversations(directory: str | Path) -> list[Conversation]:
    """Load and validate every ``*.json`` file in ``directory``; raise ConversationError listing all problems."""
    path = Path(directory)
    if not path.is_dir():
        raise ConversationError(
            [f"{path}: conversations directory not found (set --conversations-dir to a folder of *.json files)"]
        )
    files = sorted(path.glob("*.json"))
    if not files:
        raise ConversationError([f"{path}: no *.json conversation files found (see README, 'Conversation format')"])
    conversations: list[Conversation] = []
    problems: list[str] = []
    for file in files:
        file_problems: list[str] = []
        conversation = _parse(file, file_problems)
        problems += [f"{file}: {problem}" for problem in file_problems]
        if conversation is not None and not file_problems:
            conversations.append(conversation)
    if problems:
        raise ConversationError(problems)
    return conversations


def _parse(file: Path, problems: list[str]) -> Conversation | None:
    try:
        data = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        problems.append(f"not UTF-8 text (byte {error.start})")
        return None
    except json.JSONDecodeError as error:
        problems.append(f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}")
        return None
    if not isinstance(data, dict):
        problems.append("top level must be an object with 'conversation_id' and 'messages'")
        return None
    conversation_id = data.get("conversation_id")
    if not isinstance(conversation_id, str) or not conversation_id.strip():
        problems.append("missing or empty 'conversation_id' (a non-empty string)")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("'messages' must be a non-empty list")
        return None
    previous = None
    for index, message in enumerate(messages):
        where = f"message {index}"
        if not isinstance(message, dict):
            problems.append(f"{where}: must be an object with 'role' and 'content'")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES:
            problems.append(f"{where}: unknown role {role!r} (expected one of {', '.join(_ROLES)})")
        elif role == "system" and index != 0:
            problems.append(f"{where}: a system message may only come first")
        elif role == "assistant" and previous != "user":
            problems.append(f"{where}: assistant message without a user message before it")
        elif role == "user" and previous == "user":
            problems.append(f"{where}: two user messages in a row (a scripted assistant reply is missing)")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"{where}: empty or missing 'content'")
        previous = role
    if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
        problems.append("no user message to send")
    if problems:
        return None
    return Conversation(
        conversation_id=conversation_id,  # type: ignore[arg-type]  # validated above
        messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
        source=str(file),
    )


def fingerprint(conversations: list[Conversation]) -> str:
    """A digest of file names and contents, equal on two machines exactly when their sets are equal."""
    digest = hashlib.sha256()
    for conversation in sorted(conversations, key=lambda c: Path(c.source).name):
        record = [Path(conversation.source).name, conversation.conversation_id, conversation.messages]
        digest.update(json.dumps(record, ensure_ascii=False).encode())
    return digest.hexdigest()


def plan_turns(
    conversation: Conversation,
    rng: random.Random,
    cut_probability: float = 0.2,
    max_messages: int | None = None,
) -> Iterator[Turn]:
    """Yield the turns of one replay, exactly as the seed tool did.

    With ``cut_probability`` the conversation is cut to its first 1-3 user messages;
    ``max_messages`` caps the user messages further. Each request holds the system prompt,
    every earlier user message and every earlier *scripted* assistant reply.
    """
    limit = conversation.user_turns
    if rng.random() < cut_probability:
        limit = min(limit, rng.randint(1, 3))
    if max_messages is not None:
        limit = min(limit, max_messages)
    messages = conversation.messages
    user_indexes = [i for i, m in enumerate(messages) if m["role"] == "user"][:limit]
    for position, index in enumerate(user_indexes):
        reply = messages[index + 1] if index + 1 < len(messages) else None
        is_last = position + 1 == len(user_indexes)
        yield Turn(
            request=list(messages[: index + 1]),
            scripted_reply=reply,
            next_user_message=None if is_last else messages[user_indexes[position + 1]]["content"],
        )


def think_time(next_message: str, typing_speed: float, scale: float) -> float:
    """Seconds a person takes to type ``next_message``: characters ÷ typing speed, bounded, then scaled."""
    if scale <= 0:
        return 0.0
    seconds = len(next_message) / typing_speed
    return min(max(seconds, THINK_TIME_MIN_S), THINK_TIME_MAX_S) * scale
