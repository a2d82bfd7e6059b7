"""Shadow mode: a rule (or a whole service) runs on every call and its cards are recorded as silent, but
never shown, so a site sees what a rule would show before switching it on (`shadow` in the overrides
file, or CDS_SHADOW; see engine/rulebook.py).

The answer is what the service gives without the silent rules: a silent rule neither leads nor joins a
live card of its family (`families` in rules.yaml), so putting a new rule in shadow mode never hides or
changes a warning that clinicians see today. The silent cards are the ones the service would show if
their rules were live: a silent rule whose findings would be folded into another rule's card adds none.
"""
from __future__ import annotations

from typing import Any

from . import cards
from .engine.durable_rules import Finding
from .engine.rulebook import Rulebook

Card = dict[str, Any]


def split(findings: list[Finding], book: Rulebook, service_id: str, hook_instance: str, patient_id: str
          ) -> tuple[list[Card], list[Card]]:
    """(live cards, silent cards) for a call's findings."""
    silent_rules = {f.rule_id for f in findings if book.silent(service_id, f.rule_id)}
    if not silent_rules:
        return cards.build(findings, book, hook_instance, patient_id), []
    live = cards.build([f for f in findings if f.rule_id not in silent_rules], book, hook_instance, patient_id)
    shown = cards.build(findings, book, hook_instance, patient_id)
    return live, [c for c in shown if c["source"]["topic"]["code"] in silent_rules]
