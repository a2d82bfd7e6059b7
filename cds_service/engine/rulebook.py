"""The clinical content in rules/, loaded and checked as a whole before the service uses any of it.

Rules are written in a small pattern language (see the head of rules/rules.yaml) and compiled here into
durable-rules JSON, so that clinicians review YAML and the engine still gets its native form. Families
(rules about one clinical problem, which give one card) are data there too. A site's overrides
(CDS_RULES_OVERRIDES) change thresholds, product regimens and rule indicators, disable rules, or put rules
or whole services in shadow mode (as does CDS_SHADOW); every key they name must exist, so a typo stops
start-up instead of silently changing nothing.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ..hooks import SERVICE_IDS


def _shipped_rules() -> Path:
    """The rules the package ships: its own copy when installed from a wheel (pyproject.toml maps rules/
    into cds_service/_data/rules), else the repository's rules/ beside the package, as in a checkout or an
    editable install, where they are edited. CDS_RULES_DIR names a site's own instead."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_data" / "rules"
    return installed if installed.is_dir() else package.parent / "rules"


DEFAULT_RULES_DIR = _shipped_rules()
INDICATOR_RANK = {"critical": 0, "warning": 1, "info": 2}
ABOUT = ("anti-cd20", "vaccine", "chart")
_COMPARATORS = {"gt": "$gt", "ge": "$gte", "lt": "$lt", "le": "$lte", "ne": "$neq"}


class RulebookError(ValueError):
    """The rules/ data or a site override is inconsistent; the message names the offending key."""


@dataclass(frozen=True)
class Variant:
    name: str  # durable-rules rule name: "<rule id>#<n>"
    rule_id: str
    indicator: str
    summary: str
    patterns: dict[str, Any] = field(default_factory=dict, compare=False)  # order / when / unless, as written


@dataclass(frozen=True)
class Rule:
    id: str
    source: str  # a key of `sources`, or "product" for the ordered product's own label
    detail: str
    variants: tuple[Variant, ...]
    about: tuple[str, ...]
    hooks: tuple[str, ...] = ()
    orderables: tuple[dict[str, str], ...] = ()
    summary_many: str | None = None
    section: str = ""  # which part of the source, e.g. "§2.1, §4"
    shadow: bool = False  # shadow mode: its cards are recorded as silent, never shown (see shadow.py)
    sections: dict[str, str] = field(default_factory=dict, compare=False)  # per label source, for `product`

    def section_in(self, source: str) -> str:
        """Which part of `source` (a label, for a `product` rule) this rule rests on."""
        return self.sections.get(source, self.section)


@dataclass
class Rulebook:
    thresholds: dict[str, Any]
    units: dict[str, Any]
    valuesets: dict[str, Any]
    products: dict[str, Any]
    sources: dict[str, dict[str, str]]
    rules: dict[str, Rule]
    ruleset: dict[str, Any] = field(repr=False)  # durable-rules JSON definition
    families: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> rule ids, first wins a tie
    shadow_services: frozenset[str] = frozenset()  # services whose every card is silent

    @cached_property
    def variants(self) -> dict[str, Variant]:
        return {v.name: v for rule in self.rules.values() for v in rule.variants}

    @cached_property
    def family_of(self) -> dict[str, tuple[str, ...]]:
        """Each rule's family (the rule alone when it has none), in the order that breaks ties."""
        found = {rule_id: (rule_id,) for rule_id in self.rules}
        for members in self.families.values():
            found.update(dict.fromkeys(members, members))
        return found

    def silent(self, service_id: str, rule_id: str) -> bool:
        """Whether this rule's card, on this service, is recorded without being shown (shadow mode)."""
        return service_id in self.shadow_services or self.rules[rule_id].shadow


def load(rules_dir: Path | None = None, overrides: Path | None = None) -> Rulebook:
    """Load rules/ and a site's overrides into a Rulebook; RulebookError on any inconsistency."""
    rules_dir = Path(rules_dir or os.environ.get("CDS_RULES_DIR") or DEFAULT_RULES_DIR)
    thresholds = _read(rules_dir / "thresholds.yaml")
    products = _read(rules_dir / "products.yaml")
    data = _read(rules_dir / "rules.yaml")
    overrides = overrides or os.environ.get("CDS_RULES_OVERRIDES")
    site = _read(Path(overrides)) if overrides else {}
    _check_keys(site, {"thresholds", "products", "rules", "services"}, "overrides")
    thresholds = _merge(thresholds, site.get("thresholds", {}), "thresholds")
    products = _merge(products, site.get("products", {}), "products")
    rule_overrides = site.get("rules", {})
    known = {r["id"] for r in data["rules"]}
    for rule_id, change in rule_overrides.items():
        where = f"overrides: rules.{rule_id}"
        if rule_id not in known:
            raise RulebookError(f"{where}: no such rule")
        _check_keys(change, {"enabled", "indicator", "shadow"}, where)
        _check_flags(change, ("enabled", "shadow"), where)
        if "indicator" in change and change["indicator"] not in INDICATOR_RANK:
            raise RulebookError(f"{where}.indicator: expected info, warning or critical, got {change['indicator']!r}")
    shadow_rules, shadow_services = _shadow(site.get("services", {}), rule_overrides, known,
                                            os.environ.get("CDS_SHADOW", ""))
    valuesets = _read(rules_dir / "valuesets.yaml")
    sources = data["sources"]
    rules, ruleset = {}, {}
    for raw in data["rules"]:
        change = rule_overrides.get(raw["id"], {})
        if change.get("enabled", True) is False:
            continue
        rule = _rule(raw, change.get("indicator"), sources, thresholds, valuesets, raw["id"] in shadow_rules)
        rules[rule.id] = rule
        for n, variant in enumerate(raw["variants"]):
            ruleset[f"{rule.id}#{n}"] = {"all": _conditions(rule, variant, thresholds), "run": f"{rule.id}#{n}"}
    _check_products(products, sources)
    families = _families(data.get("families", {}), known, rules)
    return Rulebook(thresholds, _read(rules_dir / "units.yaml"), valuesets, products, sources, rules, ruleset,
                    families, shadow_services)


def _shadow(services: Any, rule_overrides: dict[str, Any], known: set[str], names: str
            ) -> tuple[set[str], frozenset[str]]:
    """The rules and the services in shadow mode: from the overrides file (`rules: {id: {shadow: true}}`,
    `services: {id: {shadow: true}}`) and from CDS_SHADOW (rule and service ids, commas or spaces)."""
    if not isinstance(services, dict):
        raise RulebookError("overrides: services: expected a mapping")
    shadow_services = set()
    for service_id, change in services.items():
        where = f"overrides: services.{service_id}"
        if service_id not in SERVICE_IDS:
            raise RulebookError(f"{where}: no such service (services: {', '.join(SERVICE_IDS)})")
        _check_keys(change, {"shadow"}, where)
        _check_flags(change, ("shadow",), where)
        if change.get("shadow"):
            shadow_services.add(service_id)
    shadow_rules = {rule_id for rule_id, change in rule_overrides.items() if change.get("shadow")}
    for name in names.replace(",", " ").split():
        if name not in known and name not in SERVICE_IDS:
            raise RulebookError(f"CDS_SHADOW: {name!r} is neither a rule id nor a service id")
        (shadow_services if name in SERVICE_IDS else shadow_rules).add(name)
    disabled = sorted(r for r in shadow_rules if rule_overrides.get(r, {}).get("enabled") is False)
    if disabled:
        raise RulebookError(f"overrides: rules.{disabled[0]}: disabled, yet in shadow mode; a rule in shadow "
                            "mode runs on every call (drop one of the two)")
    return shadow_rules, frozenset(shadow_services)


def _read(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RulebookError(f"cannot read {path}: {e}") from e
    if not isinstance(data, dict):
        raise RulebookError(f"{path}: expected a mapping at the top level")
    return data


def _check_keys(data: Any, allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise RulebookError(f"{where}: expected a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RulebookError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _check_flags(data: dict[str, Any], flags: tuple[str, ...], where: str) -> None:
    for flag in flags:
        if flag in data and not isinstance(data[flag], bool):
            raise RulebookError(f"{where}.{flag}: expected true or false, got {data[flag]!r}")


def _merge(base: dict[str, Any], override: Any, where: str) -> dict[str, Any]:
    if not isinstance(override, dict):
        raise RulebookError(f"overrides: {where}: expected a mapping")
    merged = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}.{key}"
        if key not in base:
            raise RulebookError(f"overrides: {path}: no such setting")
        if isinstance(base[key], dict):
            merged[key] = _merge(base[key], value, path)
        elif not _same_kind(value, base[key]):
            raise RulebookError(f"overrides: {path}: expected a value like {base[key]!r}, got {value!r}")
        else:
            merged[key] = value
    return merged


def _same_kind(value: Any, base: Any) -> bool:
    """An override must look like what it replaces: numbers for numbers, lists of the same kinds of items."""
    if isinstance(base, list):
        kinds = {_kind(item) for item in base}
        return isinstance(value, list) and bool(value) and all(_kind(item) in kinds for item in value)
    return _kind(value) == _kind(base) or (base is None and _kind(value) == "number")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


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


def _families(raw: Any, known: set[str], rules: dict[str, Rule]) -> dict[str, tuple[str, ...]]:
    """Families as written, each rule in one family at most; rules a site disabled drop out."""
    if not isinstance(raw, dict):
        raise RulebookError("families: expected a mapping of family name to rule ids")
    seen: dict[str, str] = {}
    families = {}
    for name, members in raw.items():
        for rule_id in members if isinstance(members, list) else [members]:
            if rule_id not in known:
                raise RulebookError(f"families.{name}: no such rule {rule_id!r}")
            if rule_id in seen:
                raise RulebookError(f"families.{name}: {rule_id} is already in family {seen[rule_id]}")
            seen[rule_id] = name
        families[name] = tuple(r for r in members if r in rules)
    return families


def _sections(raw: Any, rule_id: str, sources: dict) -> tuple[str, dict[str, str]]:
    """A rule's section: one text, or one per label source (and an optional `default`)."""
    if not isinstance(raw, dict):
        return str(raw or ""), {}
    unknown = [key for key in raw if key != "default" and key not in sources]
    if unknown:
        raise RulebookError(f"rules.{rule_id}.section: {unknown[0]!r} is not a source")
    return str(raw.get("default", "")), {key: str(text) for key, text in raw.items() if key != "default"}


def _rule(raw: dict[str, Any], indicator_override: str | None, sources: dict, thresholds: dict,
          valuesets: dict, shadow: bool) -> Rule:
    rule_id = raw["id"]
    if raw["source"] != "product" and raw["source"] not in sources:
        raise RulebookError(f"{rule_id} cites unknown source {raw['source']}")
    section, sections = _sections(raw.get("section", ""), rule_id, sources)
    about = tuple(_as_list(raw.get("about", "anti-cd20")))
    if not set(about) <= set(ABOUT):
        raise RulebookError(f"{rule_id}: about must be among {ABOUT}")
    variants = []
    for n, v in enumerate(raw["variants"]):
        indicator = indicator_override or threshold(thresholds, v["indicator"])
        if indicator not in INDICATOR_RANK:
            raise RulebookError(f"rules.{rule_id}.variants[{n}].indicator: {indicator!r} is not info, warning "
                                "or critical (check the threshold it names)")
        patterns = {k: v[k] for k in ("order", "when", "unless") if k in v}
        variants.append(Variant(f"{rule_id}#{n}", rule_id, indicator, v["summary"], patterns))
    return Rule(
        id=rule_id, source=raw["source"], detail=raw.get("detail", "").strip(), variants=tuple(variants),
        about=about, hooks=tuple(raw.get("hooks", ())),
        orderables=tuple(valuesets["orderables"][raw["orders"]]) if "orders" in raw else (),
        summary_many=raw.get("summary_many"), section=section, sections=sections, shadow=shadow,
    )


def _check_products(products: dict[str, Any], sources: dict) -> None:
    for key, product in products.items():
        label = product.get("label", {}).get("source")
        if label not in sources:
            raise RulebookError(f"products.{key}.label.source: unknown source {label!r}")


def _conditions(rule: Rule, variant: dict[str, Any], thresholds: dict) -> list[dict[str, Any]]:
    """Compile a variant's patterns to durable-rules JSON; the anchor (the order) always comes first."""
    anchor = {"kind": "order", "about": list(rule.about), **variant.get("order", {})}
    if rule.hooks:
        anchor["hook"] = list(rule.hooks)
    conditions = [{"order": _pattern(anchor, thresholds)}]
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
        options = [{field_: _value(s, thresholds)} for s in spec]
        return options[0] if len(options) == 1 else {"$or": options}
    if not isinstance(spec, dict):
        return {field_: _value(spec, thresholds)}
    terms = []
    for op, value in spec.items():
        if op == "near":
            other, days = value[0], threshold(thresholds, value[1])
            terms.append({"$gte": {field_: {"$sub": {"$l": {other: field_}, "$r": days}}}})
            terms.append({"$lte": {field_: {"$add": {"$l": {other: field_}, "$r": days}}}})
        elif op in _COMPARATORS:
            terms.append({_COMPARATORS[op]: {field_: _value(value, thresholds)}})
        else:
            raise RulebookError(f"unknown comparison {op!r} on {field_}")
    return terms[0] if len(terms) == 1 else {"$and": terms}


def _value(value: Any, thresholds: dict) -> Any:
    """A threshold ("$a.b"), a field of an earlier bound fact ("=order.ingredient"), or a literal."""
    if isinstance(value, str) and value.startswith("="):
        fact, _, name = value[1:].partition(".")
        return {fact: name}
    return threshold(thresholds, value)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]
