"""Every card's source resolves to a seed file a reviewer can read, and every seed file says the same things.

The rules name a source; the source names a file in seeds/. A missing or half-written seed means a card
whose evidence nobody can check, so these tests read the same rules/*.yaml the service loads and the
Markdown a pharmacy committee reads.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
SECTIONS = ("Citation", "Strength", "Facts", "Cited by")
STRENGTHS = ("label", "regulator notice", "guideline", "review", "case report", "reference text", "practice")


def _rules_data() -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """Sources and rules as the rulebook reads them, plus the label source of every product."""
    rules_yaml = yaml.safe_load((ROOT / "rules" / "rules.yaml").read_text(encoding="utf-8")) or {}
    products = yaml.safe_load((ROOT / "rules" / "products.yaml").read_text(encoding="utf-8")) or {}
    labels = sorted({p["label"]["source"] for p in products.values() if isinstance(p, dict) and "label" in p})
    return rules_yaml.get("sources") or {}, rules_yaml.get("rules") or [], labels


def _cited_sources(rule: dict[str, Any]) -> list[str]:
    """`source: product` means the ordered product's own label, so it cites every product's label."""
    cited = rule.get("source")
    cited = list(cited) if isinstance(cited, list) else [cited]
    return [s for c in cited for s in (PRODUCT_LABELS if c == "product" else [c])]


def _sections(path: Path) -> dict[str, str]:
    """The seed's `## ` sections by heading, each with its text."""
    sections: dict[str, str] = {}
    heading = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
            sections[heading] = ""
        elif heading:
            sections[heading] += line + "\n"
    return sections


def _seed_files() -> list[Path]:
    return sorted(p for p in SEEDS.glob("*.md") if p.name != "README.md")


SOURCES, RULES, PRODUCT_LABELS = _rules_data()


def test_rules_cite_sources_at_all():
    assert RULES and SOURCES, "no rules or no sources found in rules/rules.yaml"


@pytest.mark.parametrize("rule", RULES, ids=[r["id"] for r in RULES])
def test_each_rule_source_has_a_seed_file(rule):
    for source_id in _cited_sources(rule):
        assert source_id in SOURCES, f"{rule['id']} cites unknown source {source_id!r}"
        seed = SOURCES[source_id].get("seed")
        assert seed, f"source {source_id!r} has no seed: path"
        path = (ROOT / seed).resolve()
        assert path.parent == SEEDS, f"source {source_id!r} seed {seed!r} is not a file directly in seeds/"
        assert path.is_file(), f"source {source_id!r} names {seed!r}, which does not exist"


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_each_source_names_an_existing_seed(source_id):
    seed = SOURCES[source_id].get("seed")
    assert seed and (ROOT / seed).is_file(), f"source {source_id!r} seed {seed!r} does not exist"


@pytest.mark.parametrize("path", _seed_files(), ids=lambda p: p.name)
def test_seed_file_has_title_and_every_section(path):
    assert path.read_text(encoding="utf-8").startswith("# "), f"{path.name} does not start with a # title"
    sections = _sections(path)
    for name in SECTIONS:
        assert name in sections, f"{path.name} has no '## {name}' section"
        assert sections[name].strip(), f"{path.name}: '## {name}' is empty"
    strength = sections["Strength"].strip().lower()
    assert strength.startswith(STRENGTHS), f"{path.name}: strength {strength!r} is not one of {STRENGTHS}"


@pytest.mark.parametrize("rule", RULES, ids=[r["id"] for r in RULES])
def test_seed_lists_every_rule_that_cites_it(rule):
    for source_id in _cited_sources(rule):
        seed = ROOT / SOURCES[source_id]["seed"]
        cited_by = set(re.findall(r"`([a-z0-9-]+)`", _sections(seed).get("Cited by", "")))
        assert rule["id"] in cited_by, f"{seed.name} 'Cited by' does not list {rule['id']} (via {source_id})"


def test_readme_indexes_every_seed_file():
    index = (SEEDS / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in _seed_files() if f"]({p.name})" not in index]
    assert not missing, f"seeds/README.md does not index {missing}"
