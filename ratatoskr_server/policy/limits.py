"""The request-size check: every limit on what a caller may send, before any work starts.

One stage for every task, so a limit holds on every way in; each refusal names its setting.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from ratatoskr_client.errors import InvalidArgument
from ratatoskr_client.types import ChatEvent, ChatOptions, Message
from ratatoskr_server.config import LimitsSettings
from ratatoskr_server.context import RequestContext
from ratatoskr_server.pipeline.call import (
    Call,
    ChatInput,
    ClassifyInput,
    EmbedInput,
    GenerateInput,
    NliInput,
    Result,
)
from ratatoskr_server.pipeline.chain import Next, NextStream, Stage

ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
#: Longest stop string; upstreams cap theirs far lower, and each is echoed in logs and errors.
MAX_STOP_CHARS = 1000


class LimitsStage(Stage):
    def __init__(self, limits: LimitsSettings) -> None:
        self.limits = limits

    async def unary(self, call: Call, ctx: RequestContext, next: Next) -> Result:
        self.check(call)
        return await next(call, ctx)

    def stream(self, call: Call, ctx: RequestContext, next: NextStream) -> AsyncIterator[ChatEvent]:
        self.check(call)
        return next(call, ctx)

    def check(self, call: Call) -> None:
        payload = call.payload
        if isinstance(payload, EmbedInput):
            self.texts(payload.inputs)
        elif isinstance(payload, NliInput):
            self.texts([p + h for p, h in payload.pairs], "pairs", "pair")
        elif isinstance(payload, ClassifyInput):
            self.classify(payload)
        elif isinstance(payload, ChatInput):
            self.messages(payload.messages)
        elif isinstance(payload, GenerateInput):
            if not payload.prompt:
                raise InvalidArgument("prompt is empty")
            self.prompt_chars(len(payload.prompt), "the prompt")
        if call.options is not None:
            self.chat_options(call.options)

    def texts(self, texts: Sequence[str], field: str = "inputs", item: str = "input") -> None:
        limits = self.limits
        if not texts:
            raise InvalidArgument(f"{field} is empty: send at least one")
        if len(texts) > limits.max_inputs_per_request:
            raise InvalidArgument(
                f"{len(texts)} {field} exceed the limit of {limits.max_inputs_per_request} per request "
                "(limits.max_inputs_per_request); split them over several calls"
            )
        for i, text in enumerate(texts):
            if len(text) > limits.max_input_chars:
                raise InvalidArgument(
                    f"{item} {i} is {len(text)} characters; the limit is {limits.max_input_chars} "
                    "(limits.max_input_chars)"
                )

    def classify(self, payload: ClassifyInput) -> None:
        self.texts([payload.text], "text", "text")
        labels = payload.labels
        if not labels:
            raise InvalidArgument("candidate_labels is empty: give at least one label")
        if len(set(labels)) != len(labels):
            raise InvalidArgument("candidate_labels has duplicates")
        self.texts(list(labels), "candidate_labels", "label")
        template = payload.hypothesis_template
        if template:
            self.texts([template], "hypothesis_template", "template")
            outside = template.replace("{}", "", 1)
            if "{}" not in template or "{" in outside or "}" in outside:
                raise InvalidArgument(
                    "hypothesis_template needs exactly one {} for the label and no other braces, e.g. "
                    f"'This example is {{}}.'; got {template[:80]!r}"
                )

    def messages(self, messages: Sequence[Message]) -> None:
        if not messages:
            raise InvalidArgument("messages is empty: send at least one message")
        limits = self.limits
        if len(messages) > limits.max_messages:
            raise InvalidArgument(
                f"{len(messages)} messages exceed the limit of {limits.max_messages} (limits.max_messages)"
            )
        total = 0
        for i, m in enumerate(messages):
            if m.role not in ROLES:
                raise InvalidArgument(f"message {i} has role {m.role[:40]!r}; use one of {', '.join(sorted(ROLES))}")
            total += len(m.content) + sum(len(t.arguments) for t in m.tool_calls)
        self.prompt_chars(total, "the messages")

    def prompt_chars(self, chars: int, what: str) -> None:
        limit = self.limits.max_prompt_chars
        if chars > limit:
            raise InvalidArgument(f"{what} hold {chars} characters; the limit is {limit} (limits.max_prompt_chars)")

    def chat_options(self, options: ChatOptions) -> None:
        limits = self.limits
        if len(options.stop) > limits.max_stop_sequences or any(len(s) > MAX_STOP_CHARS for s in options.stop):
            raise InvalidArgument(
                f"stop takes at most {limits.max_stop_sequences} strings of at most {MAX_STOP_CHARS} characters "
                "(limits.max_stop_sequences)"
            )
        if len(options.tools) > limits.max_tools:
            raise InvalidArgument(
                f"{len(options.tools)} tools exceed the limit of {limits.max_tools} (limits.max_tools)"
            )
