"""bagstress-locust: replay scripted chats against OpenAI-compatible LLM endpoints with Locust.

Names are imported on first use, so ``python -m bagstress_locust.simulator`` runs without
Locust (and its gevent monkey-patching) in the process.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ChatClient
    from .conversations import Conversation, ConversationError, load_conversations
    from .failures import MessageFailed
    from .message import MessageResult
    from .plugin import BagstressPlugin, register
    from .scenario import Scenario
    from .user import ConversationUser

__all__ = [
    "BagstressPlugin",
    "ChatClient",
    "Conversation",
    "ConversationError",
    "ConversationUser",
    "MessageFailed",
    "MessageResult",
    "Scenario",
    "load_conversations",
    "register",
]

_MODULE_OF = {
    "BagstressPlugin": "plugin",
    "ChatClient": "client",
    "Conversation": "conversations",
    "ConversationError": "conversations",
    "ConversationUser": "user",
    "MessageFailed": "failures",
    "MessageResult": "message",
    "Scenario": "scenario",
    "load_conversations": "conversations",
    "register": "plugin",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
