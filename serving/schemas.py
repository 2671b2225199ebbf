"""The HTTP API's request and response models (pydantic), their validators and the error responses each
route documents: what the OpenAPI document of `vistaste serve` (:mod:`vistaste.serving.service`) describes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field
from pydantic_core import PydanticCustomError

from vistaste.serving.errors import ErrorBody
from vistaste.serving.feedback import MAX_POSITION  # what either feedback store can hold
from vistaste.serving.rerank import DEFAULT_METHOD, METHOD_HELP, Method

EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2262, 4, 11, tzinfo=timezone.utc)  # pandas' nanosecond range


def _utf8(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("lone_surrogate", "must be valid Unicode text (no lone surrogates such as \\ud800)") from None
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; refused for every store so both behave alike
        raise PydanticCustomError("nul_character", "must not contain NUL characters (\\u0000)")
    return value


def _in_range(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    if not EARLIEST <= aware <= LATEST:
        raise PydanticCustomError("timestamp_range", "must be between {earliest} and {latest}",
                                  {"earliest": str(EARLIEST.date()), "latest": str(LATEST.date())})
    return aware


# The pattern tells OpenAPI clients (and schemathesis) what _utf8 refuses: NUL; lone surrogates cannot be written as a pattern.
Text = Annotated[str, AfterValidator(_utf8), Field(json_schema_extra={"pattern": "^[^\\x00]*$"})]
METHOD_DESCRIPTION = (f"Diversity re-ranking over image vectors; default: the server's VISTASTE_DIVERSITY ({DEFAULT_METHOD} unless set). "
                      + "; ".join(f"'{name}': {text}" for name, text in METHOD_HELP.items())
                      + ". When to turn diversity up or off: docs/diversity.md.")


class RecommendRequest(BaseModel):
    user_id: Text | None = Field(None, max_length=200, description="Optional; anonymous when absent.")
    history: list[Annotated[Text, Field(max_length=200)]] = Field(default_factory=list,
                                                                   description="Recently clicked item ids, oldest first.")
    k: int = Field(20, gt=0, strict=True, description="Slate size (an integer: not 1.0, not true).")
    method: Method | None = Field(None, description=METHOD_DESCRIPTION)
    trade_off: float | None = Field(None, ge=0.0, le=1.0, strict=True, allow_inf_nan=False)


class Event(BaseModel):
    user_id: Text = Field(..., min_length=1, max_length=200)
    item_id: Text = Field(..., min_length=1, max_length=200)
    event: Literal["impression", "click", "save"]
    timestamp: Annotated[datetime | None, AfterValidator(_in_range)] = Field(
        None, description="Default: when received. Naive times are UTC; 1970-01-01 to 2262-04-11.")
    position: int | None = Field(None, ge=0, le=MAX_POSITION, strict=True)
    request_id: Text | None = Field(None, max_length=100)


class EventBatch(BaseModel):
    events: list[Event] = Field(..., min_length=1)


class Stored(BaseModel):
    stored: int


def _nan_is_null(value):
    return None if isinstance(value, float) and value != value else value


# A score the slate does not have (e.g. no relevance for a fallback item) is NaN in the recommender and
# null in JSON, which has no NaN.
Score = Annotated[float | None, BeforeValidator(_nan_is_null)]


class SlateItem(BaseModel):
    item_id: str
    score: Score
    relevance: Score
    trend: Score
    diversity_gain: Score
    reason: str
    image_path: str | None = Field(None, description="The image's path relative to the dataset directory (never a server path).")
    image_url: str | None = Field(None, description="image_base_url + '/' + image_path, when the server sets image_base_url.")


class SlateResponse(BaseModel):
    user_id: str
    version: str
    fallback: str | None
    history_length: int
    request_id: str
    items: list[SlateItem]


class Health(BaseModel):
    status: Literal["ok", "no-model"]
    version: str | None
    items: int


class Readiness(BaseModel):
    ready: bool
    version: str | None = Field(None, description="The version this process serves.")
    current: str | None = Field(None, description="The version 'current' names now (this process follows it).")
    detail: str | None = None



ERRORS = {status: {"model": ErrorBody, "description": description} for status, description in (
    (400, "Malformed request (e.g. a body that cannot be parsed, a bad Content-Length)."),
    (413, "Body over max_body_bytes (counted as it arrives, chunked included)."),
    (422, "Invalid input: validation (type 'validation'), unknown item ids ('unknown_items') or a limit ('limit')."),
    (429, "Per-key rate limit exceeded (Retry-After says when to retry)."),
    (503, "Overloaded, deadline passed while queued, or no model loaded yet (Retry-After says when to retry)."),
)}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
for _status in (429, 503):
    ERRORS[_status]["headers"] = RETRY_AFTER
UNAUTHORIZED = {401: {"model": ErrorBody, "description": "Missing or wrong X-API-Key."}}
NOT_FOUND = {404: {"model": ErrorBody, "description": "No such route (e.g. a user id containing '/')."}}
