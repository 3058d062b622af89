"""The one table from upstream HTTP failures to domain errors."""

from __future__ import annotations

import json

import pytest

from ratatoskr_client import errors
from ratatoskr_server.providers.errors import error_from_status


def _body(message: str, code: str = "") -> str:
    return json.dumps({"error": {"message": message, "code": code}})


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (401, _body("invalid api key"), errors.Unauthenticated),
        (403, _body("this key has no access to gpt-5 in this region"), errors.PermissionDenied),
        (404, _body("model not found"), errors.NotFound),
        (400, _body("bad value for temperature"), errors.InvalidArgument),
        (
            400,
            _body("This model's maximum context length is 8192 tokens", "context_length_exceeded"),
            errors.OutOfRange,
        ),
        (413, _body("prompt is too long"), errors.OutOfRange),
        (422, _body("flagged by the safety system", "content_filter"), errors.PermissionDenied),
        # A retryable failure whose text mentions length or content keeps its retryable status.
        (429, _body("too many tokens per minute; retry later"), errors.ResourceExhausted),
        (503, _body("overloaded: input is too long for the current queue"), errors.Unavailable),
        (500, _body("content_filter service unavailable"), errors.Unavailable),
        (501, _body("embeddings are not implemented by this server"), errors.Unimplemented),
        (502, "<html>bad gateway</html>", errors.Unavailable),
    ],
)
def test_status_table(status: int, body: str, kind: type[errors.RatatoskrError]) -> None:
    err = error_from_status("up", status, body, {"retry-after": "2"}, secrets=["sk-secret"])
    assert type(err) is kind, err
    assert err.message.startswith("up: ")


def test_retry_after_and_scrubbing() -> None:
    err = error_from_status("up", 429, _body("slow down, sk-secret"), {"retry-after-ms": "1500"}, ["sk-secret"])
    assert isinstance(err, errors.ResourceExhausted) and err.retry_after_s == 1.5
    assert "sk-secret" not in err.message
