"""The example requests in fhir_examples/, posted through HTTP, give the cards expected.json says.

expected.json maps each file to the rule ids that must give a card (with their indicator) and those that
must not; `no_cards` where no card at all is the point, `status` where the answer is not a 200,
`product` / `recognised_by` where the example is about recognising the ordered product, `source` where it is
about which label the cards cite, and `xfail` (the reason) where the service departs from the clinical
rule table and the example keeps the clinical answer.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from conftest import EXAMPLES, NOW, ROOT, load_json

EXPECTED: dict[str, dict[str, Any]] = load_json(EXAMPLES / "expected.json")
FILES = sorted(p.name for p in EXAMPLES.glob("*.json") if p.name != "expected.json")
NOT_VALID_ON_PURPOSE = {"sandbox-shape--draft-order.json"}  # the sandbox's draft order has no `intent`
RECOGNISED_BY_NAME = "Recognised by its name"


def _case(name: str) -> Any:
    reason = EXPECTED.get(name, {}).get("xfail")
    return pytest.param(name, marks=pytest.mark.xfail(reason=reason, strict=True)) if reason else name


@pytest.fixture(scope="module")
def service_for_hook(client) -> dict[str, dict[str, Any]]:
    """The service definition per hook, from discovery, so the examples name only their hook."""
    return {s["hook"]: s for s in client.get("/cds-services").get_json()["services"]}


@pytest.mark.parametrize("name", [_case(name) for name in FILES])
def test_example_gives_the_expected_cards(name: str, client, service_for_hook) -> None:
    body = load_json(EXAMPLES / name)
    expected = EXPECTED[name]
    service = service_for_hook[body["hook"]]
    if "data-unavailable" in expected.get("absent", []):
        missing = sorted(set(service["prefetch"]) - set(body.get("prefetch") or {}))
        assert not missing, f"the service declares prefetch keys {missing}: add them to the example"
    response = client.post(f"/cds-services/{service['id']}", json=body)
    if "status" in expected:
        assert response.status_code == expected["status"], response.get_data(as_text=True)
        return
    assert response.status_code == 200, response.get_data(as_text=True)
    cards = response.get_json()["cards"]
    by_rule = {card["source"]["topic"]["code"]: card for card in cards}
    shown = {rule: f"{card['indicator']}: {card['summary']}" for rule, card in by_rule.items()}
    for rule, indicator in expected["present"].items():
        assert rule in by_rule, f"no {rule} card; got {shown}"
        assert by_rule[rule]["indicator"] == indicator, shown[rule]
    clipped = [card["summary"] for card in cards if card["summary"].endswith("…")]
    assert not clipped, f"summaries cut at 140 characters: shorten the rule's text: {clipped}"
    unexpected = {rule: shown[rule] for rule in expected["absent"] if rule in by_rule}
    assert not unexpected, f"cards that should not be there: {unexpected}"
    if expected.get("no_cards"):
        assert cards == [], shown
    if "product" in expected:
        _assert_product(expected, [by_rule[rule] for rule in expected["present"]])
    for rule in expected["present"] if "source" in expected else ():
        assert by_rule[rule]["source"]["label"].startswith(expected["source"]), by_rule[rule]["source"]


def _assert_product(expected: dict[str, Any], cards: list[dict[str, Any]]) -> None:
    """The cards name the product the example orders, and say how it was recognised."""
    assert cards, "a product example needs a card to show which product was recognised"
    for card in cards:
        assert f"Order: {expected['product']}," in card["detail"], card["detail"]
        assert (RECOGNISED_BY_NAME in card["detail"]) == (expected["recognised_by"] == "name"), card["detail"]


def test_every_example_has_an_expectation_and_a_readme_row() -> None:
    assert FILES, "no examples found"
    assert sorted(EXPECTED) == FILES
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert [name for name in FILES if f"`{name}`" not in readme] == []


def test_every_rule_has_a_positive_and_a_negative_example() -> None:
    rules = [rule["id"] for rule in yaml.safe_load((ROOT / "rules" / "rules.yaml").read_text())["rules"]]
    kept = [e for e in EXPECTED.values() if "xfail" not in e]
    positive = {rule for e in kept for rule in e.get("present", {})}
    negative = {rule for e in kept for rule in e.get("absent", [])}
    without_positive = [rule for rule in rules if rule not in positive]
    without_negative = [rule for rule in rules if rule not in negative]
    assert not without_positive, f"rules with no example that gives their card: {without_positive}"
    assert not without_negative, f"rules with no example that must not give their card: {without_negative}"


@pytest.mark.parametrize("name", sorted(set(FILES) - NOT_VALID_ON_PURPOSE))
def test_example_resources_are_valid_fhir_dated_before_the_clock(name: str) -> None:
    """Examples must not lean on the service's leniency by accident, nor on results from the future."""
    body = load_json(EXAMPLES / name)
    drafts = body["context"].get("draftOrders", {})  # patient-view requests have none
    resources = [entry["resource"] for entry in drafts.get("entry", [])]
    for value in (body.get("prefetch") or {}).values():
        if value is not None:
            resources += [value] + [entry["resource"] for entry in value.get("entry", [])]
    for resource in resources:
        try:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        except ValidationError as e:
            pytest.fail(f"{resource['resourceType']}/{resource.get('id')}: {e}")
        when = resource.get("effectiveDateTime")
        if when:
            assert datetime.fromisoformat(when.replace("Z", "+00:00")) <= NOW, f"{resource['id']} is dated {when}"
