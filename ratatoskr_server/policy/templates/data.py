"""What a chat template reads and the limits it renders under, apart from the engine that renders.

Counting a conversation's tokens and estimating them need the messages in the template's shape, but
not Jinja: keeping these here lets the daemon start without importing Jinja (about 0.1 s), which
loads on the first template actually rendered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ratatoskr_client.types import Message, ToolDefinition


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 2.0
    max_chars: int = 8_000_000


def message_data(message: Message) -> dict[str, Any]:
    """A message as templates read it: the OpenAI shape, tool call arguments as parsed JSON."""
    data: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name:
        data["name"] = message.name
    if message.tool_calls:
        calls = []
        for call in message.tool_calls:
            try:
                arguments: Any = json.loads(call.arguments) if call.arguments else {}
            except ValueError:
                arguments = call.arguments
            calls.append({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
        data["tool_calls"] = calls
    if message.tool_call_id:
        data["tool_call_id"] = message.tool_call_id
    return data


def tool_data(tool: ToolDefinition) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {"type": "function", "function": function}
