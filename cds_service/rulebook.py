"""The clinical content in rules/, loaded once and checked at start-up.

Rules are written in a small pattern language (see rules/rules.yaml) and compiled here into
durable-rules JSON, so that clinicians review YAML and the engine still gets its native form.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}
_COMPARATORS = {"gt": "$gt", "ge": "$gte", "lt": "$lt", "le": "$lte", "ne": "$neq"}


class RulebookError(ValueError):
    """The rules/ data is inconsistent; the service refuses to start rather than run half the checks."""


@dataclass(frozen=True)
class Variant:
    name: str  # durable-rules rule name: "<rule id>#<n>"
    rule_id: str
    indicator: str
    summary: str
    bound: tuple[str, ...]  # names of the facts the variant binds (always starts with "order")


@dataclass(frozen=True)
class Rule:
    id: str
    source: dict[str, str]
    detail: str
    variants: tuple[Variant, ...]
    suppresses: tuple[str, ...] = ()
    orderables: tuple[dict[str, str], ...] = ()
    summary_many: str | None = None


@dataclass
class Rulebook:
    thresholds: dict[str, Any]
    units: dict[str, Any]
    valuesets: dict[str, Any]
    rules: dict[str, Rule]
    ruleset: dict[str, Any] = field(repr=False)  # durable-rules JSON definition

    @property
    def variants(self) -> dict[str, Variant]:
        return {v.name: v for rule in self.rules.values() for v in rule.variants}


def load(rules_dir: Path | None = None, site_config: Path | None = None) -> Rulebook:
    """Load rules/ (and a site's overrides) into a Rulebook; raise RulebookError on bad data."""
    rules_dir = Path(rules_dir or os.environ.get("CDS_RULES_DIR") or DEFAULT_RULES_DIR)
    thresholds = _read(rules_dir / "thresholds.yaml")
    site = site_config or os.environ.get("CDS_RULES_OVERRIDES")
    if site:
        thresholds = _merge(thresholds, _read(Path(site)))
    data = _read(rules_dir / "rules.yaml")
    valuesets = _read(rules_dir / "valuesets.yaml")
    rules = {r["id"]: _rule(r, data["sources"], thresholds, valuesets) for r in data["rules"]}
    for rule in rules.values():
        unknown = set(rule.suppresses) - set(rules)
        if unknown:
            raise RulebookError(f"{rule.id} suppresses unknown rules {sorted(unknown)}")
    ruleset = {}
    for raw in data["rules"]:
        for n, variant in enumerate(raw["variants"]):
            name = f"{raw['id']}#{n}"
            ruleset[name] = {"all": _conditions(variant, thresholds), "run": name}
    return Rulebook(thresholds, _read(rules_dir / "units.yaml"), valuesets, rules, ruleset)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RulebookError(f"cannot read {path}: {e}") from e


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if key not in base:
            raise RulebookError(f"site configuration names an unknown setting: {key}")
        merged[key] = _merge(base[key], value) if isinstance(value, dict) else value
    return merged


def threshold(thresholds: dict[str, Any], ref: Any) -> Any:
    """Resolve "$a.b" against thresholds.yaml; other values pass through."""
    if not (isinstance(ref, str) and ref.startswith("$")):
        return ref
    value: Any = thresholds
    for part in ref[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise RulebookError(f"unknown threshold {ref}")
        value = value[part]
    return value


def _rule(raw: dict[str, Any], sources: dict, thresholds: dict, valuesets: dict) -> Rule:
    rule_id = raw["id"]
    if raw["source"] not in sources:
        raise RulebookError(f"{rule_id} cites unknown source {raw['source']}")
    variants = []
    for n, v in enumerate(raw["variants"]):
        indicator = threshold(thresholds, v["indicator"])
        if indicator not in INDICATOR_RANK:
            raise RulebookError(f"{rule_id}: indicator {indicator!r} is not info, warning or critical")
        bound = ("order", *v.get("when", {}).keys())
        variants.append(Variant(f"{rule_id}#{n}", rule_id, indicator, v["summary"], bound))
    orderables = tuple(valuesets["orderables"][raw["orders"]]) if "orders" in raw else ()
    return Rule(
        id=rule_id,
        source=sources[raw["source"]],
        detail=raw.get("detail", "").strip(),
        variants=tuple(variants),
        suppresses=tuple(raw.get("suppresses", ())),
        orderables=orderables,
        summary_many=raw.get("summary_many"),
    )


def _conditions(variant: dict[str, Any], thresholds: dict) -> list[dict[str, Any]]:
    """Compile a variant's patterns to durable-rules JSON; the order pattern always comes first."""
    conditions = [{"order": _pattern({"kind": "order", **variant.get("order", {})}, thresholds)}]
    for name, pattern in variant.get("when", {}).items():
        conditions.append({name: _pattern(pattern, thresholds)})
    for n, pattern in enumerate(variant.get("unless", ())):
        conditions.append({f"absent{n}$not": _pattern(pattern, thresholds)})
    return conditions


def _pattern(pattern: dict[str, Any], thresholds: dict) -> dict[str, Any]:
    terms = [_term(field_, spec, thresholds) for field_, spec in pattern.items()]
    return terms[0] if len(terms) == 1 else {"$and": terms}


def _term(field_: str, spec: Any, thresholds: dict) -> dict[str, Any]:
    if isinstance(spec, list):
        return {"$or": [{field_: threshold(thresholds, s)} for s in spec]}
    if not isinstance(spec, dict):
        return {field_: threshold(thresholds, spec)}
    terms = []
    for op, value in spec.items():
        if op == "near":
            other, days = value[0], threshold(thresholds, value[1])
            terms.append({"$gte": {field_: {"$sub": {"$l": {other: field_}, "$r": days}}}})
            terms.append({"$lte": {field_: {"$add": {"$l": {other: field_}, "$r": days}}}})
        elif op in _COMPARATORS:
            terms.append({_COMPARATORS[op]: {field_: threshold(thresholds, value)}})
        else:
            raise RulebookError(f"unknown comparison {op!r} on {field_}")
    return terms[0] if len(terms) == 1 else {"$and": terms}
