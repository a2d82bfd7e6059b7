"""The body a CDS client POSTs to /cds-services/{id}/feedback (CDS Hooks 2.0 §feedback), checked whole
before anything is stored: one bad item rejects the POST, so a corrected retry is never half-stored.

Strict where the spec defines structure (outcome values, acceptedSuggestions with `accepted`, a
timestamp with a time zone); lenient where real clients differ: the CDS Hooks sandbox sends an override
reason with only `code` (and `system` when known), and clients may add reasons of their own.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError, model_validator

MAX_ID = 255  # card uuids, suggestion ids and codes: identifiers, never prose
MAX_ITEMS = 100  # feedback items in one POST: a clinician acts on a few cards at a time
MAX_BYTES = 256 * 1024  # a POST's body: MAX_ITEMS items with long comments fit
MAX_DISPLAY = 255
MAX_COMMENT = 4000


class InvalidFeedback(ValueError):
    """The feedback body is malformed (HTTP 400); the message says which item and field."""


@dataclass(frozen=True)
class Reason:
    code: str
    system: str | None
    display: str | None


@dataclass(frozen=True)
class FeedbackItem:
    card: str
    outcome: str
    outcome_at: datetime
    accepted_suggestions: tuple[str, ...]
    reason: Reason | None
    comment: str | None


def _no_nul(value: str) -> str:
    """PostgreSQL cannot store NUL; pydantic already refuses lone surrogates (JSON's \\ud800) here."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _text(limit: int):
    """Free text is kept, not refused: made storable (NULs dropped, lone surrogates replaced), length capped."""
    return AfterValidator(lambda value: value.replace("\x00", "").encode(errors="replace").decode()[:limit])


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID), AfterValidator(_no_nul)]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # extensions and fields of later spec versions pass through


class _Coding(_Open):
    code: Id
    system: Id | None = None
    display: Annotated[str, _text(MAX_DISPLAY)] | None = None


class _OverrideReason(_Open):
    reason: _Coding | None = None
    userComment: Annotated[str, _text(MAX_COMMENT)] | None = None


class _Suggestion(_Open):
    id: Id


class _Feedback(_Open):
    card: Id
    outcome: Literal["accepted", "overridden"]
    outcomeTimestamp: str
    acceptedSuggestions: list[_Suggestion] | None = None
    overrideReason: _OverrideReason | None = None

    @model_validator(mode="after")
    def _fits_outcome(self) -> "_Feedback":
        if self.outcome == "accepted":
            if not self.acceptedSuggestions:
                raise ValueError("acceptedSuggestions (the ids of the accepted suggestions) is required when "
                                 "outcome is 'accepted'")
            if self.overrideReason is not None:
                raise ValueError("overrideReason is only for outcome 'overridden'")
        elif self.acceptedSuggestions:
            raise ValueError("acceptedSuggestions is only for outcome 'accepted'")
        return self


class _Body(_Open):
    feedback: list[_Feedback]


def parse(body: Any) -> list[FeedbackItem]:
    """The feedback items of a POST body, or InvalidFeedback saying what is wrong."""
    if not isinstance(body, dict):
        raise InvalidFeedback("the feedback body must be a JSON object with a 'feedback' list")
    if isinstance(body.get("feedback"), list) and len(body["feedback"]) > MAX_ITEMS:
        raise InvalidFeedback(f"feedback: at most {MAX_ITEMS} items in one POST, not {len(body['feedback'])}")
    try:
        parsed = _Body.model_validate(body)
    except ValidationError as e:
        raise InvalidFeedback("; ".join(_describe(err) for err in e.errors()[:5])) from None
    return [_item(f, i) for i, f in enumerate(parsed.feedback)]


def _item(feedback: _Feedback, index: int) -> FeedbackItem:
    reason = feedback.overrideReason.reason if feedback.overrideReason else None
    return FeedbackItem(
        card=feedback.card,
        outcome=feedback.outcome,
        outcome_at=_timestamp(feedback.outcomeTimestamp, index),
        accepted_suggestions=tuple(s.id for s in feedback.acceptedSuggestions or ()),
        reason=Reason(reason.code, reason.system, reason.display) if reason else None,
        comment=feedback.overrideReason.userComment if feedback.overrideReason else None,
    )


def _timestamp(text: str, index: int) -> datetime:
    """RFC 3339 needs a zone: a time without one could be any of 24 hours, and it keys idempotency."""
    try:
        value = datetime.fromisoformat(text)
        if value.tzinfo is not None:
            return value.astimezone(timezone.utc)
    except (ValueError, OverflowError):  # OverflowError: a zone that takes year 9999 past the calendar's end
        pass
    raise InvalidFeedback(f"feedback[{index}].outcomeTimestamp: {text[:40]!r} is not an ISO 8601 date-time "
                          "with a time zone, e.g. 2021-12-11T10:05:31Z")


def _describe(error: dict[str, Any]) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or "body"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}"
