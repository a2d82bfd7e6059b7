"""Override figures per rule and indicator over a period: the evidence a pharmacy committee tunes
thresholds on. Counts only; no patient data (nor its hash, nor free-text comments) leaves this module.

A card's fate is its latest feedback: a card overridden and later accepted counts as accepted. The
override rate is overridden / (accepted + overridden): cards nobody acted on send no feedback (CDS Hooks
2.0 §card-ignored) and cannot be told apart from cards never shown.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Date, func, select

from ..rulebook import INDICATOR_RANK
from .models import Feedback, IssuedCard
from .store import Store

DEFAULT_DAYS = 90
MAX_DAYS = 3660  # about ten years: the report has a bar per week, and the store keeps a year by default
EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(3000, 1, 1, tzinfo=timezone.utc)
UNRECORDED = "(card not on record)"  # feedback about a card whose issue was not recorded, or was pruned


class BadPeriod(ValueError):
    """--since/--until (or ?since=/&until=) cannot be read; the message says how to write them."""


@dataclass(frozen=True)
class Period:
    since: datetime  # included
    until: datetime  # excluded

    @classmethod
    def parse(cls, since: str | None, until: str | None, now: datetime) -> "Period":
        """Dates are UTC days, both ends included; times are ISO 8601 (UTC when no zone is given)."""
        end = _moment(until, "until", end_of_day=True) if until else now
        try:
            start = _moment(since, "since", end_of_day=False) if since else end - timedelta(days=DEFAULT_DAYS)
        except OverflowError:  # 90 days before the first day there is
            raise BadPeriod("until is too early") from None
        if start >= end:
            raise BadPeriod("since must be before until")
        if start < EARLIEST or end > LATEST:
            raise BadPeriod(f"since and until must lie between {EARLIEST.date()} and {LATEST.date()}")
        if end - start > timedelta(days=MAX_DAYS):
            raise BadPeriod(f"the period may cover at most {MAX_DAYS} days")
        return cls(start, end)


@dataclass
class RuleFigures:
    rule_id: str
    indicator: str
    issued: int = 0
    feedback: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def override_rate(self) -> float | None:
        acted_on = self.accepted + self.overridden
        return self.overridden / acted_on if acted_on else None

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        return self.reasons.most_common(n)


@dataclass(frozen=True)
class Report:
    period: Period
    rules: list[RuleFigures]
    weeks: list[tuple[date, int]]  # Monday of each week, cards issued that week

    def override_rate_by_rule(self) -> list[tuple[str, float | None, int]]:
        """Per rule id, all indicators together: (rule, override rate, cards acted on)."""
        totals: dict[str, list[int]] = {}
        for figures in self.rules:
            total = totals.setdefault(figures.rule_id, [0, 0])
            total[0] += figures.overridden
            total[1] += figures.accepted + figures.overridden
        return [(rule, overridden / acted if acted else None, acted) for rule, (overridden, acted) in totals.items()]


def build(store: Store, period: Period) -> Report:
    with store.transaction() as connection:
        issued = connection.execute(
            select(IssuedCard.rule_id, IssuedCard.indicator, func.count())
            .where(IssuedCard.issued_at >= period.since, IssuedCard.issued_at < period.until)
            .group_by(IssuedCard.rule_id, IssuedCard.indicator)).all()
        feedback = connection.execute(
            select(Feedback.card_uuid, Feedback.outcome, Feedback.reason_code, Feedback.reason_display,
                   IssuedCard.rule_id, IssuedCard.indicator)
            .outerjoin(IssuedCard, IssuedCard.card_uuid == Feedback.card_uuid)
            .where(Feedback.outcome_at >= period.since, Feedback.outcome_at < period.until)
            .order_by(Feedback.outcome_at, Feedback.id)).all()
        day = func.date(IssuedCard.issued_at, type_=Date)
        days = connection.execute(
            select(day, func.count())
            .where(IssuedCard.issued_at >= period.since, IssuedCard.issued_at < period.until)
            .group_by(day)).all()
    return Report(period, _figures(issued, feedback), _weeks(days, period))


def _figures(issued: list, feedback: list) -> list[RuleFigures]:
    figures: dict[tuple[str, str], RuleFigures] = {}

    def of(rule_id: str | None, indicator: str | None) -> RuleFigures:
        key = (rule_id or UNRECORDED, indicator or "-")
        return figures.setdefault(key, RuleFigures(*key))

    for rule_id, indicator, count in issued:
        of(rule_id, indicator).issued = count
    latest = {}
    for row in feedback:
        of(row.rule_id, row.indicator).feedback += 1
        latest[row.card_uuid] = row
    for row in latest.values():
        target = of(row.rule_id, row.indicator)
        if row.outcome == "accepted":
            target.accepted += 1
        else:
            target.overridden += 1
            if row.reason_code:
                target.reasons[row.reason_display or row.reason_code] += 1
    return sorted(figures.values(), key=lambda f: (f.rule_id == UNRECORDED, f.rule_id,
                                                   INDICATOR_RANK.get(f.indicator, len(INDICATOR_RANK))))


def _weeks(days: list, period: Period) -> list[tuple[date, int]]:
    """Every week from the first with cards (or the period's start) to the period's end, empty ones too."""
    counts: Counter[date] = Counter()
    for day, count in days:
        counts[day - timedelta(days=day.weekday())] += count
    last = (period.until - timedelta(microseconds=1)).date()
    first = max(min(counts, default=period.since.date()), period.since.date())
    week = first - timedelta(days=first.weekday())
    weeks = []
    while week <= last:
        weeks.append((week, counts[week]))
        week += timedelta(days=7)
    return weeks


def as_text(report: Report) -> str:
    """The report as a plain table, for `cds-service report`."""
    head = f"Card feedback from {_when(report.period.since)} to {_when(report.period.until)} (UTC)"
    if not report.rules:
        return f"{head}\nNo cards issued and no feedback in this period."
    columns = ("rule", "indicator", "issued", "feedback", "accepted", "overridden", "override rate",
               "top override reasons")
    rows = [(f.rule_id, f.indicator, str(f.issued), str(f.feedback), str(f.accepted), str(f.overridden),
             percent(f.override_rate), ", ".join(f"{r} ({n})" for r, n in f.top_reasons()) or "-")
            for f in report.rules]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [head, "  ".join(_cell(c, w, i) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines += ["  ".join(_cell(c, w, i) for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    return "\n".join(lines)


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def _cell(text: str, width: int, column: int) -> str:
    return text.rjust(width) if 2 <= column <= 6 else text.ljust(width)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _moment(text: str, name: str, end_of_day: bool) -> datetime:
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end_of_day else 0)
            return datetime.combine(day, time(), timezone.utc)
        moment = datetime.fromisoformat(text)
        return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    except ValueError:
        raise BadPeriod(f"{name}: {text[:40]!r} is neither a date (2026-11-21) nor an ISO 8601 time") from None
    except OverflowError:  # the day after 9999-12-31, or a zone that takes a time past either end
        raise BadPeriod(f"{name}: {text[:40]!r} is at the very end of the calendar") from None
