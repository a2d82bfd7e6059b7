"""The tables: cards this service issued (shown, or silent: made by a rule in shadow mode), the hook
calls answered (counted, for cards per 1,000 calls), what clinicians did with the cards (feedback), and
the EHR token ids already accepted (the JWT replay cache every worker and instance shares).

Feedback is stored only about cards on record as issued when it arrives (store.save_feedback), but it is
not a foreign key to them: the two are pruned on their own dates, so a card may go before its feedback.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, MetaData, String, Text, UniqueConstraint, false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {"ix": "ix_%(table_name)s_%(column_0_name)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "pk": "pk_%(table_name)s"}


class UtcDateTime(TypeDecorator):
    """Aware UTC datetimes in and out on both back ends: SQLite keeps no zone, PostgreSQL converts to the
    session's; comparisons and the idempotency key must not depend on either."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a stored time must carry its time zone")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class IssuedCard(Base):
    __tablename__ = "issued_cards"

    card_uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(100))
    hook: Mapped[str] = mapped_column(String(100))
    rule_id: Mapped[str] = mapped_column(String(100))
    indicator: Mapped[str] = mapped_column(String(16))
    patient_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256, hex: never the patient id itself
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    silent: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # never shown


class HookCall(Base):
    """A hook call answered, with how many cards it showed and how many it kept silent: the denominator
    of "cards per 1,000 calls". No patient data: the key is a hash of the service and hookInstance, so an
    EHR's retry of the same call counts once, as its cards do."""

    __tablename__ = "hook_calls"

    call_key: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256, hex
    service_id: Mapped[str] = mapped_column(String(100))
    hook: Mapped[str] = mapped_column(String(100))
    called_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    cards: Mapped[int] = mapped_column(Integer)
    silent: Mapped[int] = mapped_column(Integer)


class Feedback(Base):
    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("card_uuid", "outcome", "outcome_at", name="uq_feedback_once"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(100))
    card_uuid: Mapped[str] = mapped_column(String(255), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_at: Mapped[datetime] = mapped_column(UtcDateTime)
    accepted_suggestions: Mapped[list[str]] = mapped_column(JSON)
    reason_system: Mapped[str | None] = mapped_column(String(255))
    reason_code: Mapped[str | None] = mapped_column(String(255))
    reason_display: Mapped[str | None] = mapped_column(String(255))
    user_comment: Mapped[str | None] = mapped_column(Text)  # free text: may name a patient; never reported
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class UsedToken(Base):
    """A token id (jti) accepted from an issuer, kept until its token expires: the primary key is what
    lets exactly one of several workers accept a token presented to all of them at once."""

    __tablename__ = "used_tokens"

    iss: Mapped[str] = mapped_column(Text, primary_key=True)  # a configured issuer: no length of ours to impose
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


metadata = Base.metadata
