"""Replay the conversations in conversations/ against an OpenAI-compatible endpoint.

    uv run locust -f locustfile.py --headless -u 25 -r 5 -t 60s

Copy this file to adapt it: subclass ConversationUser (weights, extra tasks, hooks).
"""

from locust import events

from bagstress_locust import ConversationUser, register

register(events)


class ChatUser(ConversationUser):
    """A person chatting: a random scripted conversation, a random model and temperature each time."""
