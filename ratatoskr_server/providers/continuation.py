"""The conversations a continuation request is made of, in domain terms, for every adapter to send.

When a stream breaks mid-answer the route's next candidate continues it (``routing/failover.py``
decides when and how).  A target continues in one of two ways, declared per provider and model:

* ``prefill``: the partial answer is the start of the model's own turn, a trailing assistant
  message the model extends (Anthropic's Messages API; vLLM's ``continue_final_message``;
  llama.cpp's server prefills a trailing assistant message).  The model writes only the rest.
* ``prompt``: the partial answer as an assistant turn and a short user turn asking for the rest.
  Any chat API takes it; the model may repeat a little of the seam, which the gateway removes.

Each adapter turns these messages into its wire format and adds what only its wire has.
"""

from __future__ import annotations

from collections.abc import Sequence

from ratatoskr_client.types import Message

PREFILL = "prefill"
PROMPT = "prompt"
NONE = "none"

#: The user turn of a prompt-mode continuation: the rest of the answer, nothing around it.
CONTINUE_INSTRUCTION = (
    "Your previous reply was cut off mid-answer. Continue it exactly where it stopped: write only the "
    "rest of it, without repeating what is already written and without any preamble or comment."
)


def prefilled(messages: Sequence[Message], partial: str) -> list[Message]:
    """The conversation with ``partial`` opening the assistant's turn."""
    return [*messages, Message("assistant", partial)]


def prompted(messages: Sequence[Message], partial: str) -> list[Message]:
    """The conversation with ``partial`` as the assistant's turn and a request to continue it."""
    return [*messages, Message("assistant", partial), Message("user", CONTINUE_INSTRUCTION)]
