"""Override figures per rule and indicator over a period: the evidence a pharmacy committee tunes
thresholds on; and live cards next to silent ones (rules in shadow mode), per week and per 1,000 calls,
the evidence for switching a rule on. Counts only; no patient data (nor its hash, nor free-text comments)
leaves this module.

A card's fate is its latest feedback: a card overridden and later accepted counts as accepted. The
override rate is overridden / (accepted + overridden): cards nobody acted on send no feedback (CDS Hooks
2.0 §card-ignored) and cannot be told apart from cards never shown. A rule's cards per 1,000 calls count
the calls to the services that issued its cards in the period.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from sqlalchemy import Date, func, select

from ..engine.rulebook import INDICATOR_RANK
from .models import Feedback, HookCall, IssuedCard
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
    issued: int = 0  # shown (live)
    feedback: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    silent: int = 0  # recorded, not shown: the rule (or its service) was in shadow mode
    calls: int = 0  # calls to the services that issued this rule's cards
    live_weeks: Counter[date] = field(default_factory=Counter)  # Monday -> cards shown that week
    silent_weeks: Counter[date] = field(default_factory=Counter)

    @property
    def override_rate(self) -> float | None:
        acted_on = self.accepted + self.overridden
        return self.overridden / acted_on if acted_on else None

    def top_reasons(self, n: int = 3) -> list[tuple[str, int]]:
        return self.reasons.most_common(n)

    def per_1000(self, cards: int) -> float | None:
        return cards * 1000 / self.calls if self.calls else None


@dataclass(frozen=True)
class Week:
    monday: date
    calls: int
    live: int
    silent: int


@dataclass(frozen=True)
class Report:
    period: Period
    rules: list[RuleFigures]
    weeks: list[Week]  # every week from the first with cards or calls to the period's end

    @property
    def shown(self) -> list[RuleFigures]:
        """The rules and indicators with cards shown or feedback in the period (silent-only ones are not)."""
        return [f for f in self.rules if f.issued or f.feedback]

    @property
    def carded(self) -> list[RuleFigures]:
        """The rules and indicators with cards (live or silent) in the period."""
        return [f for f in self.rules if f.issued or f.silent]

    def override_rate_by_rule(self) -> list[tuple[str, float | None, int]]:
        """Per rule id, all indicators together: (rule, override rate, cards acted on)."""
        totals: dict[str, list[int]] = {}
        for figures in self.shown:
            total = totals.setdefault(figures.rule_id, [0, 0])
            total[0] += figures.overridden
            total[1] += figures.accepted + figures.overridden
        return [(rule, overridden / acted if acted else None, acted) for rule, (overridden, acted) in totals.items()]


def build(store: Store, period: Period) -> Report:
    with store.transaction() as connection:
        day = func.date(IssuedCard.issued_at, type_=Date)
        issued = connection.execute(
            select(IssuedCard.rule_id, IssuedCard.indicator, IssuedCard.silent, IssuedCard.service_id, day,
                   func.count())
            .where(IssuedCard.issued_at >= period.since, IssuedCard.issued_at < period.until)
            .group_by(IssuedCard.rule_id, IssuedCard.indicator, IssuedCard.silent, IssuedCard.service_id, day)).all()
        feedback = connection.execute(
            select(Feedback.card_uuid, Feedback.outcome, Feedback.reason_code, Feedback.reason_display,
                   IssuedCard.rule_id, IssuedCard.indicator)
            .outerjoin(IssuedCard, IssuedCard.card_uuid == Feedback.card_uuid)
            .where(Feedback.outcome_at >= period.since, Feedback.outcome_at < period.until)
            .order_by(Feedback.outcome_at, Feedback.id)).all()
        call_day = func.date(HookCall.called_at, type_=Date)
        calls = connection.execute(
            select(HookCall.service_id, call_day, func.count())
            .where(HookCall.called_at >= period.since, HookCall.called_at < period.until)
            .group_by(HookCall.service_id, call_day)).all()
    figures = _figures(issued, feedback, calls)
    return Report(period, figures, _weeks(figures, calls, period))


def _figures(issued: list, feedback: list, calls: list) -> list[RuleFigures]:
    figures: dict[tuple[str, str], RuleFigures] = {}

    def of(rule_id: str | None, indicator: str | None) -> RuleFigures:
        key = (rule_id or UNRECORDED, indicator or "-")
        return figures.setdefault(key, RuleFigures(*key))

    calls_per_service: Counter[str] = Counter()
    for service_id, _, count in calls:
        calls_per_service[service_id] += count
    services: dict[tuple[str, str], set[str]] = {}
    for rule_id, indicator, silent, service_id, day, count in issued:
        target = of(rule_id, indicator)
        if silent:
            target.silent += count
            target.silent_weeks[_monday(day)] += count
        else:
            target.issued += count
            target.live_weeks[_monday(day)] += count
        services.setdefault((target.rule_id, target.indicator), set()).add(service_id)
    for key, names in services.items():
        figures[key].calls = sum(calls_per_service[name] for name in names)
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


def _weeks(figures: list[RuleFigures], calls: list, period: Period) -> list[Week]:
    """Every week from the first with cards or calls (or the period's start) to the period's end, empty
    ones too."""
    live: Counter[date] = sum((f.live_weeks for f in figures), Counter())
    silent: Counter[date] = sum((f.silent_weeks for f in figures), Counter())
    called: Counter[date] = Counter()
    for _, day, count in calls:
        called[_monday(day)] += count
    last = (period.until - timedelta(microseconds=1)).date()
    first = max(min([*live, *silent, *called], default=period.since.date()), period.since.date())
    week = _monday(first)
    weeks = []
    while week <= last:
        weeks.append(Week(week, called[week], live[week], silent[week]))
        week += timedelta(days=7)
    return weeks


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def as_text(report: Report) -> str:
    """The report as a plain table, for `cds-service report`."""
    head = f"Card feedback from {_when(report.period.since)} to {_when(report.period.until)} (UTC)"
    if not report.rules:
        return f"{head}\nNo cards issued and no feedback in this period."
    columns = ("rule", "indicator", "issued", "feedback", "accepted", "overridden", "override rate",
               "top override reasons")
    rows = [(f.rule_id, f.indicator, str(f.issued), str(f.feedback), str(f.accepted), str(f.overridden),
             percent(f.override_rate), ", ".join(f"{r} ({n})" for r, n in f.top_reasons()) or "-")
            for f in report.shown]
    lines = [head, *_columns(columns, rows, range(2, 7))]
    if report.carded:
        lines += ["", "Live and silent cards (silent: rules in shadow mode, recorded and never shown), per 1,000 "
                  "calls to the services that issued them", *_columns(*shadow_table(report), range(2, 7))]
        lines += ["", "Per week (weeks start on Monday; by rule: live/silent)", *_columns(*week_table(report), range(1, 4))]
    return "\n".join(lines)


def shadow_table(report: Report) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Per rule and indicator: live and silent cards, the calls they are counted against, and per 1,000."""
    columns = ("rule", "indicator", "live", "silent", "calls", "live per 1,000", "silent per 1,000")
    rows = [(f.rule_id, f.indicator, str(f.issued), str(f.silent), str(f.calls), per_mille(f.per_1000(f.issued)),
             per_mille(f.per_1000(f.silent))) for f in report.carded]
    return columns, rows


def week_table(report: Report) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Per week: calls, live and silent cards, and each rule's live/silent cards that week."""
    columns = ("week", "calls", "live", "silent", "by rule")
    rows = []
    for week in report.weeks:
        by_rule = [f"{f.rule_id} {f.indicator} {f.live_weeks[week.monday]}/{f.silent_weeks[week.monday]}"
                   for f in report.carded if f.live_weeks[week.monday] or f.silent_weeks[week.monday]]
        rows.append((f"{week.monday}", str(week.calls), str(week.live), str(week.silent), ", ".join(by_rule) or "-"))
    return columns, rows


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.0%}"


def per_mille(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1f}"


def _columns(columns: tuple[str, ...], rows: list[tuple[str, ...]], numeric: range) -> list[str]:
    """A plain table: a header line, then one line per row; numeric columns right-aligned."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    return ["  ".join(_cell(c, w, i in numeric) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in (columns, *rows)]


def _cell(text: str, width: int, numeric: bool) -> str:
    return text.rjust(width) if numeric else text.ljust(width)


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
