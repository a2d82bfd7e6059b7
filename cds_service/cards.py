"""Findings → CDS Hooks cards: one card per clinical problem, the most urgent variant's words, every
number shown."""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import deadline, markup
from .engine.durable_rules import Finding
from .engine.rulebook import INDICATOR_RANK, Rule, Rulebook

TOPIC_SYSTEM = "https://cd20-cds.org/CodeSystem/rule"
OVERRIDE_SYSTEM = "https://cd20-cds.org/CodeSystem/override-reason"
OVERRIDE_REASONS = [
    ("result-elsewhere", "Result available outside this record"),
    ("specialist-reviewed", "Reviewed with a specialist; proceeding"),
    ("benefit-outweighs-risk", "Benefit outweighs the risk for this patient"),
    ("not-applicable", "Does not apply to this patient"),
]
SUMMARY_LIMIT = 139
LAB_COLUMNS = ("Result", "Value", "Date", "Limit used", "× limit")
log = logging.getLogger(__name__)


def build(findings: list[Finding], rulebook: Rulebook, hook_instance: str, patient_id: str) -> list[dict[str, Any]]:
    """Cards for these findings, most urgent first: one per clinical problem of each order (a family of
    rules in rules.yaml, or a rule on its own), in the words of its most urgent rule, with what the others
    of its family found carried in its detail. Orders of two products signed together get cards of their
    own, each citing its own product's label; orders of one product (the day 1 and day 15 infusions)
    share theirs, since a problem of the patient's is one problem however many infusions are signed."""
    by_problem: dict[tuple[str, tuple[str, ...]], dict[str, list[Finding]]] = {}
    for finding in findings:
        problem = (_subject(finding), rulebook.family_of[finding.rule_id])
        by_problem.setdefault(problem, {}).setdefault(finding.rule_id, []).append(finding)
    thresholds = Names(rulebook.thresholds)
    cards = []
    for (subject, family), by_rule in by_problem.items():
        parts = [_Part.of(rulebook.rules[rule_id], by_rule[rule_id], rulebook, thresholds)
                 for rule_id in family if rule_id in by_rule]
        parts.sort(key=lambda part: INDICATOR_RANK[part.indicator])  # stable: a tie keeps the family's order
        card_id = f"{hook_instance}/{subject}/{parts[0].rule.id}" if subject else f"{hook_instance}/{parts[0].rule.id}"
        cards.append(_card(parts[0], _adding(parts[1:], parts[0], rulebook), rulebook, card_id, patient_id))
    order = list(rulebook.rules)
    cards.sort(key=lambda c: (INDICATOR_RANK[c["indicator"]], order.index(c["source"]["topic"]["code"])))
    return cards


def _subject(finding: Finding) -> str:
    """What a finding's card is about: the ordered product ("ocrelizumab-iv"), a vaccine order by its
    reference ("MedicationRequest/1"), "" for the chart (patient-view, which has one subject)."""
    order = finding.bindings["order"]
    return "" if order.get("about") == "chart" else order.get("product") or order.get("reference") or ""


@dataclass(frozen=True)
class _Part:
    """What one rule would say as a card of its own: its most urgent variant's findings and words."""

    rule: Rule
    indicator: str
    findings: list[Finding]
    said: list[str]  # each finding's summary, for the summary field (plain text)
    said_markdown: list[str]  # the same, for the detail (record text escaped once, for Markdown)
    thresholds: Names

    @classmethod
    def of(cls, rule: Rule, findings: list[Finding], rulebook: Rulebook, thresholds: Names) -> "_Part":
        variants = rulebook.variants
        top = min(INDICATOR_RANK[variants[f.variant].indicator] for f in findings)
        chosen = sorted((f for f in findings if INDICATOR_RANK[variants[f.variant].indicator] == top),
                        key=_severity, reverse=True)
        said = [_fill(variants[f.variant].summary, f.bindings, thresholds, markup.plain) for f in chosen]
        said_markdown = [_fill(variants[f.variant].summary, f.bindings, thresholds, markup.markdown) for f in chosen]
        return cls(rule, variants[chosen[0].variant].indicator, chosen, said, said_markdown, thresholds)

    def keeping(self, kept: list[bool]) -> "_Part":
        def kept_of(items: list[Any]) -> list[Any]:
            return [item for item, keep in zip(items, kept) if keep]

        return _Part(self.rule, self.indicator, kept_of(self.findings), kept_of(self.said),
                     kept_of(self.said_markdown), self.thresholds)

    @property
    def summaries(self) -> list[str]:
        return _unique(self.said)

    @property
    def summaries_markdown(self) -> list[str]:
        """Each of `summaries` as the detail shows it."""
        return list(dict(zip(self.said, self.said_markdown)).values())

    @property
    def about_gaps(self) -> bool:
        """Whether every finding is a check that could not run: the detail's list of gaps then says
        each of them, with its reason, and a list of the summaries would say it twice."""
        return all(any(fact.get("kind") == "unavailable" for fact in f.bindings.values()) for f in self.findings)

    @property
    def order(self) -> dict[str, Any]:
        return self.findings[0].bindings["order"]

    @property
    def summary(self) -> str:
        if len(self.summaries) > 1 and self.rule.summary_many:
            return _fill(self.rule.summary_many, {"order": self.order}, self.thresholds, markup.plain,
                         count=len(self.summaries))
        return self.summaries[0]

    def detail(self) -> str:
        return _fill(self.rule.detail, {"order": self.order}, self.thresholds, markup.markdown)


def _adding(others: list[_Part], lead: _Part, rulebook: Rulebook) -> list[_Part]:
    """The other parts of a problem, each without the findings whose every result the lead already shows
    (an elevated ALT says nothing new on the liver-injury card that names it). A finding that rests on
    something missing (an `unless` pattern: no HBV DNA in 90 days) always says something new."""
    shown = {_key(fact) for f in lead.findings for name, fact in f.bindings.items() if name != "order"}
    kept = [part.keeping([not _subsumed(f, shown, rulebook) for f in part.findings]) for part in others]
    return [part for part in kept if part.findings]


def _subsumed(finding: Finding, shown: set[str], rulebook: Rulebook) -> bool:
    if "unless" in rulebook.variants[finding.variant].patterns:
        return False
    facts = [_key(fact) for name, fact in finding.bindings.items() if name != "order"]
    return bool(facts) and all(fact in shown for fact in facts)


def _key(fact: dict[str, Any]) -> str:
    return json.dumps(fact, sort_keys=True, default=str)


def _card(lead: _Part, others: list[_Part], rulebook: Rulebook, card_id: str, patient_id: str) -> dict[str, Any]:
    """The card; `card_id` (the hook instance, what the card is about and the rule) makes its uuid."""
    deadline.check()
    source = _source(lead.rule, lead.order, rulebook)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, card_id)),
        "summary": _clip(lead.summary),
        "indicator": lead.indicator,
        "detail": _detail(lead, others, source, rulebook),
        "source": {"label": source["label"], **({"url": source["url"]} if source.get("url") else {}),
                   "topic": {"system": TOPIC_SYSTEM, "code": lead.rule.id, "display": lead.rule.id}},
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
    }
    suggestions = _unique_by_label(_order_tests(part.rule, patient_id, card["uuid"], part is lead)
                                   for part in [lead, *others] if part.rule.orderables)
    if suggestions:
        card["suggestions"] = suggestions
        card["selectionBehavior"] = "at-most-one"
    return card


def _severity(finding: Finding) -> float:
    """How far out of range the finding's results are: the most abnormal one is named in the summary."""
    return max((fact.get("x_uln", 0) for fact in finding.bindings.values()), default=0)


def _source(rule: Rule, order: dict[str, Any], rulebook: Rulebook) -> dict[str, str]:
    """The rule's source, or the ordered product's own label (and its section there) for rules that
    depend on the product: a rituximab order cites the rituximab label."""
    key = order.get("label_source") if rule.source == "product" else rule.source
    source = rulebook.sources[key]
    section = rule.section_in(key)
    label = f"{source['label']}, {section}" if section else source["label"]
    return {"label": label, "url": source.get("url", ""), "seed": source["seed"]}


def _detail(lead: _Part, others: list[_Part], source: dict[str, str], rulebook: Rulebook) -> str:
    order = lead.order
    parts = []
    if len(lead.summaries) > 1 and not lead.about_gaps:
        parts.append(_bullets(lead.summaries_markdown))
    parts.append(lead.detail())
    for other in others:
        said = other.summaries_markdown[0] if len(other.summaries) == 1 else "\n" + _bullets(other.summaries_markdown)
        parts.append(f"**Also:** {said}\n\n{other.detail()}")
    order = _Inert(order)  # from here on, record text goes into the detail as it is: escaped for Markdown
    findings = [f for part in [lead, *others] for f in part.findings]
    rows = _unique(_row(_Inert(fact)) for f in findings for name, fact in f.bindings.items()
                   if name != "order" and fact.get("kind") == "lab")
    if rows:
        parts.append(_table(rows))
    gaps = _unique(f"- {markup.markdown(fact['what'])} {markup.markdown(fact['reason'])}" for f in findings
                   for fact in f.bindings.values() if fact.get("kind") == "unavailable")
    if gaps:
        parts.append("\n".join(gaps))
    problems = _unique(f"- Problem list: {markup.markdown(fact['display'])} (active)" for f in findings
                       for fact in f.bindings.values() if fact.get("kind") == "condition")
    if problems:
        parts.append("\n".join(problems))
    dose = (f"Order: {order['name']}, {order['phase_text']}"
            + (f"; last dose {order['last_dose']}" if order.get("last_dose") else "") + ".")
    if order.get("about") == "chart":
        dose = f"Therapy on record: {order['name']}; last dose {order['last_dose']}."
    if order.get("matched_by") == "text":
        dose += f" Recognised by its name (\"{order['matched_text']}\"), not by a code."
    parts.append(dose)
    parts.append(f"Source: {source['label']} (evidence summary: {source['seed']}).")
    also = _unique(f"Also: {s['label']} (evidence summary: {s['seed']})." for other in others
                   for s in [_source(other.rule, other.order, rulebook)] if s["label"] != source["label"])
    parts += also
    return "\n\n".join(p for p in parts if p)


def _row(fact: Mapping[str, Any]) -> tuple[str, ...]:
    if "result" in fact:
        return fact["label"], fact["value_text"], fact["date"], "", ""  # value_text: the result, marked if not final
    limit, times = "", ""
    if fact.get("limit_used") == "high" and "uln_text" in fact:
        limit, times = f"upper {fact['uln_text']} ({fact['range_source']})", fact["x_uln_text"]
    elif fact.get("limit_used") == "low" and "lln_text" in fact:
        limit = f"lower {fact['lln_text']} ({fact['range_source']})"
    return fact["label"], fact["value_text"], fact["date"], limit, times


def _table(rows: list[tuple[str, ...]]) -> str:
    """Lab rows as a Markdown table, without the limit columns when no row has a limit (qualitative results)."""
    kept = [i for i, _ in enumerate(LAB_COLUMNS) if i < 3 or any(row[i] for row in rows)]
    lines = [[LAB_COLUMNS[i] for i in kept], ["---"] * len(kept)] + [[row[i] for i in kept] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _order_tests(rule: Rule, patient_id: str, card_uuid: str, lead: bool = True) -> dict[str, Any]:
    names = " and ".join(t["display"].split(" [")[0] for t in rule.orderables)
    actions = [{
        "type": "create",
        "description": f"Order {test['display']} (LOINC {test['code']})",
        "resource": {
            "resourceType": "ServiceRequest", "status": "draft", "intent": "order",
            "code": {"coding": [{"system": "http://loinc.org", "code": test["code"], "display": test["display"]}],
                     "text": test["display"]},
            "subject": {"reference": f"Patient/{patient_id}"},
        },
    } for test in rule.orderables]
    name = f"{card_uuid}/order" if lead else f"{card_uuid}/{rule.id}/order"
    return {"label": _clip(f"Order {names}"), "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "isRecommended": True, "actions": actions}


def _unique_by_label(suggestions: Any) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for suggestion in suggestions:
        found.setdefault(suggestion["label"], suggestion)
    return list(found.values())


def _bullets(summaries: list[str]) -> str:
    """Summaries already filled in for Markdown, one bullet each."""
    return "\n".join(f"- {s}" for s in summaries)


def _fill(template: str, bindings: dict[str, Any], thresholds: Names, escape: Callable[[str], str],
          **extra: Any) -> str:
    """The template (clinicians' text, as written) with the facts' values made inert by `escape`."""
    names = {name: Names(fact, escape) for name, fact in bindings.items()}
    try:
        return template.strip().format(t=thresholds, **names, **extra)
    except (AttributeError, KeyError, IndexError) as e:
        log.error("card text template refers to a missing value: %s", e)
        return template.strip()


class Names:
    """A dict's values as attributes for str.format templates ("{t.igg.low_mg_dl}", "{order.short}"), a
    key's hyphens read as underscores; looked up when a template asks, not converted ahead. Facts' text
    comes from the record or the request: `escape` makes it inert (markup.py); thresholds have none."""

    __slots__ = ("_values", "_escape")

    def __init__(self, values: dict[str, Any], escape: Callable[[str], str] | None = None) -> None:
        self._values = values
        self._escape = escape

    def __getattr__(self, name: str) -> Any:
        values = self._values
        key = name if name in values else next((k for k in values if k.replace("-", "_") == name), None)
        if key is None:
            raise AttributeError(name)
        value = values[key]
        if isinstance(value, dict):
            return Names(value, self._escape)
        return self._escape(value) if self._escape and isinstance(value, str) else value


class _Inert(Mapping[str, Any]):
    """A fact whose text reads escaped for Markdown, for the detail's lines and table rows; escaped when
    read, as a row uses a few of a fact's many fields."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getitem__(self, key: str) -> Any:
        value = self._values[key]
        return markup.markdown(value) if isinstance(value, str) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _clip(text: str) -> str:
    """A summary as a sentence: capitalised, and within CDS Hooks' 140 characters."""
    text = text[:1].upper() + text[1:]
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1].rstrip() + "…"


def _unique(items: Any) -> list[str]:
    return list(dict.fromkeys(items))
