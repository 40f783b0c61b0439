"""Text of LangChain values, for the events of both directions of ``rlm_toolkit.integrations.langchain``."""

from __future__ import annotations

import json

from langchain_core.messages import BaseMessage
from langchain_core.prompt_values import PromptValue


def content_text(content: object) -> str:
    """The text of a message's content or a token: a str, or the text of the text blocks of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block if isinstance(block, str) else str(block.get("text", ""))
            for block in content
            if isinstance(block, str) or (isinstance(block, dict) and block.get("type") == "text")
        )
    return ""


def text_of(value: object) -> str:
    """A chain's input or output as the text of its event."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseMessage):
        return content_text(value.content)
    if isinstance(value, PromptValue):
        return value.to_string()
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):  # circular, or keys JSON cannot hold
        return str(value)
