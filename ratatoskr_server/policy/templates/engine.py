"""Chat templates rendered exactly as transformers renders them, under limits an untrusted one cannot pass.

The environment matches ``transformers.utils.chat_template_utils`` (the reference renderer): Jinja's
``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension, ``raise_exception``, ``strftime_now``, a ``tojson`` that keeps non-ASCII and takes
indent/separators/sort_keys, a ``dict`` that is only a constructor, and a ``namespace`` that refuses
underscore names.  A template comes from a model file, so it is treated as untrusted: the sandbox
refuses attribute escapes, a render stops at ``render_timeout_s`` (checked at every call the template
makes: loops need ``range``, recursion needs macro calls) and at ``max_rendered_chars``, and every
failure is FAILED_PRECONDITION naming the template and its line.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ratatoskr_client.errors import FailedPrecondition
from ratatoskr_server.policy.templates.data import Limits

#: Added to the final message to find where it ends in the rendering (continue_final_message).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "
_TEMPLATE_FILE = "<template>"


@dataclass(slots=True)
class _Budget:
    deadline: float
    clock: Callable[[], float] = time.monotonic
    exceeded: str = ""


class _Env(ImmutableSandboxedEnvironment):
    """The sandbox, with the render's time budget checked at every call a template makes."""

    budget: _Budget | None = None

    def call(self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = self.budget
        if budget is not None and budget.clock() > budget.deadline:
            budget.exceeded = "time"
            raise jinja2.exceptions.TemplateRuntimeError("the template ran past its time limit")
        return super().call(__context, __obj, *args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes HTML characters; templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateDict:
    """``dict(...)`` for templates, without the type's attributes to climb through."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """A namespace that refuses underscore names, so no template stores a way into CPython's internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"templates cannot store underscore names on a namespace ({name!r})")


@dataclass
class ChatTemplate:
    """One compiled template and the special tokens its model defines (bos, eos …)."""

    name: str
    source: str
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], datetime] = datetime.now

    def __post_init__(self) -> None:
        env = _Env(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: self.now().strftime(fmt)
        env.globals["dict"] = _TemplateDict()
        env.globals["namespace"] = _TemplateNamespace
        self._env = env
        try:
            self._template = env.from_string(self.source)
        except jinja2.exceptions.TemplateSyntaxError as err:
            raise FailedPrecondition(
                f"chat template '{self.name}' does not compile, line {err.lineno}: {err.message}"
            ) from None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tools: Sequence[Mapping[str, Any]] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        **extra: Any,
    ) -> str:
        """The prompt, as ``apply_chat_template(..., tokenize=False)`` would give it. Blocking: run it off
        the event loop."""
        chat = [dict(m) for m in messages]
        final = ""
        if continue_final_message:
            if not chat or not isinstance(chat[-1].get("content"), str):
                raise FailedPrecondition("continue_final_message needs a final message with text content")
            final = chat[-1]["content"]
            chat[-1]["content"] = final + _CONTINUE_TAG
        context = {
            **self.special_tokens,
            **extra,
            "messages": chat,
            "tools": list(tools) if tools is not None else None,
            "documents": list(documents) if documents is not None else None,
            "add_generation_prompt": add_generation_prompt,
        }
        text = self._generate(context)
        if continue_final_message:
            at = text.rfind(_CONTINUE_TAG.strip())
            if at < 0 or final.strip() not in text:
                raise FailedPrecondition(
                    f"chat template '{self.name}' drops part of the final message, so it cannot be continued"
                )
            text = text[:at] if text[at : at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
        return text

    def _generate(self, context: dict[str, Any]) -> str:
        budget = _Budget(self.clock() + self.limits.timeout_s, self.clock)
        self._env.budget = budget
        pieces: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(**context):
                size += len(piece)
                if size > self.limits.max_chars:
                    raise FailedPrecondition(
                        f"chat template '{self.name}' rendered more than {self.limits.max_chars} characters "
                        "(templates.max_rendered_chars)"
                    )
                if budget.clock() > budget.deadline:
                    budget.exceeded = "time"
                    raise jinja2.exceptions.TemplateRuntimeError("the template ran past its time limit")
                pieces.append(piece)
        except FailedPrecondition:
            raise
        except (jinja2.exceptions.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as err:
            raise self._failure(err) from None
        except RecursionError:
            raise FailedPrecondition(f"chat template '{self.name}' recursed too deeply") from None
        finally:
            self._env.budget = None
        return "".join(pieces)

    def _failure(self, err: BaseException) -> FailedPrecondition:
        line = _template_line(err.__traceback__)
        where = f", line {line}" if line else ""
        if isinstance(err, jinja2.exceptions.SecurityError):
            return FailedPrecondition(f"chat template '{self.name}' tried something its sandbox forbids{where}: {err}")
        if "time limit" in str(err):
            return FailedPrecondition(
                f"chat template '{self.name}' ran past {self.limits.timeout_s:g}s (templates.render_timeout_s){where}"
            )
        if type(err) is jinja2.exceptions.TemplateError:  # raise_exception(...) in the template itself
            return FailedPrecondition(f"chat template '{self.name}' refused the conversation{where}: {err}")
        return FailedPrecondition(f"chat template '{self.name}' failed{where}: {type(err).__name__}: {err}")


def _template_line(tb: TracebackType | None) -> int:
    """The template line a failure happened on: Jinja maps its frames back to template lines."""
    line = 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == _TEMPLATE_FILE:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line
