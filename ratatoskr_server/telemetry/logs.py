"""Structured logging: one JSON object per line, with every known secret masked.

Redaction happens in a filter on the handler, so no code path can log a key
by accident: configured secret values and common key shapes are replaced
in the message and in every extra field.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry.trace import Span

from ratatoskr_server.context import RequestContext
from ratatoskr_server.redact import ordered_secrets, scrub_ordered

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
#: Field types that cannot hold a secret.
_PLAIN = frozenset({int, float, bool, type(None)})


#: A W3C traceparent: version, trace id, parent span id, flags.
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def trace_ids(ctx: RequestContext) -> dict[str, str]:
    """The request's trace and span ids for its log line, so a log line and its trace find each other.

    With tracing on, the request span's own ids; with it off, the trace id the caller sent (and the
    caller's span as the parent), so logs still join the caller's trace.
    """
    span = ctx.span
    if isinstance(span, Span):
        context = span.get_span_context()
        if context.is_valid:
            return {"trace_id": format(context.trace_id, "032x"), "span_id": format(context.span_id, "016x")}
    carrier = ctx.trace_carrier
    if carrier:
        found = _TRACEPARENT.match(carrier.get("traceparent", "").strip().lower())
        if found and found.group(1) != "0" * 32:
            return {"trace_id": found.group(1), "parent_span_id": found.group(2)}
    return {}


class Redactor(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = ordered_secrets(secrets)  # put in order once, not for every string of every record

    def scrub(self, text: str) -> str:
        return scrub_ordered(text, self.secrets)

    def _deep(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return {k: self._deep(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set):
            return [self._deep(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(record.getMessage())
        record.args = None
        if record.exc_info:
            # A traceback quotes local values and messages: format it here, scrubbed, once.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        secrets = self.secrets
        for key, value in list(vars(record).items()):
            if key in _STANDARD or type(value) in _PLAIN:
                continue
            clean = scrub_ordered(value, secrets) if type(value) is str else self._deep(value)
            if clean is not value:  # most fields hold nothing to mask: left as they are
                setattr(record, key, clean)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        #: The last second formatted, and its text: lines come many to a second.
        self._second: tuple[int, str] = (-1, "")
        #: ``json.dumps(..., default=str)`` would build an encoder for every line.
        self._encode = json.JSONEncoder(default=str).encode

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc"] = record.exc_text
        return self._encode(data)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            line += "\n" + record.exc_text
        return line.rstrip()


def resolve_format(fmt: str) -> str:
    """ "auto": text for a person at a terminal, JSON for whatever collects a service's output."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


def configure_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Route every logger to stderr through the redactor; safe to call again on reload."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Redactor(secrets))
    handler.setFormatter(JsonFormatter() if resolve_format(fmt) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # What no line of ours prints is not gathered for every record (the logging HOWTO's list of
    # optimisations): the caller's file and line (a stack walk per record), thread and process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # httpx and httpcore log every upstream URL, query string (and so any key in it) included, at
    # INFO and DEBUG; our adapters log what matters about upstream calls themselves.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
