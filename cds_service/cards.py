"""Findings → CDS Hooks cards: one card per rule, the most urgent variant's words, every number shown."""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import deadline, markup
from .engine import Finding
from .rulebook import INDICATOR_RANK, Rule, Rulebook

TOPIC_SYSTEM = "https://cd20-cds.org/CodeSystem/rule"
OVERRIDE_SYSTEM = "https://cd20-cds.org/CodeSystem/override-reason"
OVERRIDE_REASONS = [
    ("result-elsewhere", "Result available outside this record"),
    ("specialist-reviewed", "Reviewed with a specialist; proceeding"),
    ("benefit-outweighs-risk", "Benefit outweighs the risk for this patient"),
    ("not-applicable", "Does not apply to this patient"),
]
SUMMARY_LIMIT = 139
log = logging.getLogger(__name__)


def build(findings: list[Finding], rulebook: Rulebook, hook_instance: str, patient_id: str) -> list[dict[str, Any]]:
    """Cards for these findings, most urgent first; suppressed rules (e.g. a subset pattern) dropped."""
    by_rule: dict[str, list[Finding]] = {}
    for finding in findings:
        by_rule.setdefault(finding.rule_id, []).append(finding)
    suppressed = {s for rule_id in by_rule for s in rulebook.rules[rule_id].suppresses}
    order = list(rulebook.rules)
    thresholds = Names(rulebook.thresholds)
    cards = [
        _card(rulebook.rules[rule_id], group, rulebook, thresholds, hook_instance, patient_id)
        for rule_id, group in by_rule.items() if rule_id not in suppressed
    ]
    cards.sort(key=lambda c: (INDICATOR_RANK[c["indicator"]], order.index(c["source"]["topic"]["code"])))
    return cards


def _card(rule: Rule, findings: list[Finding], rulebook: Rulebook, thresholds: Names, hook_instance: str,
          patient_id: str) -> dict[str, Any]:
    deadline.check()
    variants = rulebook.variants
    top = min(INDICATOR_RANK[variants[f.variant].indicator] for f in findings)
    chosen = sorted((f for f in findings if INDICATOR_RANK[variants[f.variant].indicator] == top),
                    key=_severity, reverse=True)
    summaries = _unique(_fill(variants[f.variant].summary, f.bindings, thresholds, markup.plain) for f in chosen)
    order = chosen[0].bindings["order"]
    summary = summaries[0]
    if len(summaries) > 1 and rule.summary_many:
        summary = _fill(rule.summary_many, {"order": order}, thresholds, markup.plain, count=len(summaries))
    source = _source(rule, order, rulebook)
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{hook_instance}/{rule.id}")),
        "summary": _clip(summary),
        "indicator": variants[chosen[0].variant].indicator,
        "detail": _detail(rule, summaries, chosen, thresholds, source),
        "source": {"label": source["label"], **({"url": source["url"]} if source.get("url") else {}),
                   "topic": {"system": TOPIC_SYSTEM, "code": rule.id, "display": rule.id}},
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
    }
    if rule.orderables:
        card["suggestions"] = [_order_tests(rule, patient_id, card["uuid"])]
        card["selectionBehavior"] = "at-most-one"
    return card


def _severity(finding: Finding) -> float:
    """How far out of range the finding's results are: the most abnormal one is named in the summary."""
    return max((fact.get("x_uln", 0) for fact in finding.bindings.values()), default=0)


def _source(rule: Rule, order: dict[str, Any], rulebook: Rulebook) -> dict[str, str]:
    """The rule's source, or the ordered product's own label for rules that depend on the product."""
    key = order.get("label_source") if rule.source == "product" else rule.source
    source = rulebook.sources[key]
    label = f"{source['label']}, {rule.section}" if rule.section else source["label"]
    return {"label": label, "url": source.get("url", ""), "seed": source["seed"]}


def _detail(rule: Rule, summaries: list[str], findings: list[Finding], thresholds: Names,
            source: dict[str, str]) -> str:
    order = findings[0].bindings["order"]
    parts = []
    if len(summaries) > 1:
        parts.append("\n".join(f"- {markup.markdown(s)}" for s in summaries))
    parts.append(_fill(rule.detail, {"order": order}, thresholds, markup.markdown))
    order = _Inert(order)  # from here on, record text goes into the detail as it is: escaped for Markdown
    rows = _unique(_row(_Inert(fact)) for f in findings for name, fact in f.bindings.items()
                   if name != "order" and fact.get("kind") == "lab")
    if rows:
        parts.append("| Result | Value | Date | Limit used | × limit |\n|---|---|---|---|---|\n" + "\n".join(rows))
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
    return "\n\n".join(p for p in parts if p)


def _row(fact: Mapping[str, Any]) -> str:
    if "result" in fact:
        return f"| {fact['label']} | {fact['result']} | {fact['date']} | | |"
    limit, times = "", ""
    if fact.get("limit_used") == "high" and "uln_text" in fact:
        limit, times = f"upper {fact['uln_text']} ({fact['range_source']})", fact["x_uln_text"]
    elif fact.get("limit_used") == "low" and "lln_text" in fact:
        limit = f"lower {fact['lln_text']} ({fact['range_source']})"
    return f"| {fact['label']} | {fact['value_text']} | {fact['date']} | {limit} | {times} |"


def _order_tests(rule: Rule, patient_id: str, card_uuid: str) -> dict[str, Any]:
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
    return {"label": _clip(f"Order {names}"), "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{card_uuid}/order")),
            "isRecommended": True, "actions": actions}


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
