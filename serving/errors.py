"""One JSON error body for every 4xx/5xx the service answers, safe to encode whatever the input was.

The body is ``{"detail": str, "type": str, "errors": [...] | null, "unknown_items": [...] | null}``
(:class:`ErrorBody`, documented in the OpenAPI schema for every error status). Anything that came from
the request (a field name, an item id) is passed through :func:`json_safe` first: lone surrogates
become ``\\udXXX`` text, non-finite floats become ``null``, so encoding the error never fails; input
values themselves are never echoed.
"""
from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel, Field


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(..., description="Where the problem is, e.g. ['body', 'events', 0, 'position'].")
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str = Field(..., description="What is wrong, in one sentence: the value and the rule where there is one.")
    type: str = Field("error", description="Machine-readable kind: validation, unknown_items, limit, unauthorized, too_large, "
                                           "overloaded, deadline, rate_limited, not_ready, bad_request, http.")
    errors: list[ErrorItem] | None = Field(None, description="Per-field validation problems (type 'validation').")
    unknown_items: list[str] | None = Field(None, description="Item ids not in the served catalog (type 'unknown_items'), at most 50.")


def json_safe(value: Any) -> Any:
    """``value`` with every string valid UTF-8 and every float finite (else None), recursively."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {json_safe(str(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return json_safe(str(value))


def error_content(status: int, detail: str, kind: str, **extra: Any) -> dict:
    """The :class:`ErrorBody` dict (JSON-safe) for ``detail``; ``extra`` fills ``errors``/``unknown_items``."""
    return json_safe({"detail": detail, "type": kind, "errors": extra.get("errors"), "unknown_items": extra.get("unknown_items")})


def error_bytes(status: int, detail: str, kind: str, **extra: Any) -> bytes:
    return json.dumps(error_content(status, detail, kind, **extra), allow_nan=False, separators=(",", ":")).encode("utf-8")


def validation_errors(errors) -> tuple[str, list[dict]]:
    """FastAPI/pydantic validation errors -> (one-line summary, [{loc, msg, type}]) without the inputs."""
    items = [{"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
              "type": str(e.get("type", ""))} for e in errors]
    summary = "; ".join(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}" for item in items[:5])
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return f"invalid request: {summary}{more}", items
