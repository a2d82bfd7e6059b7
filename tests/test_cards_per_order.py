"""Orders of two anti-CD20 products signed together get cards of their own, through HTTP: one card per
clinical problem of each product, each naming and citing its own product, each with its own uuid (the hook
instance, the product and the rule), so that feedback on one is never taken for the other; two orders of
one product share their cards. Shadow mode splits them as it splits the cards of one order.
"""
from __future__ import annotations

from typing import Any

import cd20_builders as b
from cd20_builders import OCREVUS, RITUXAN
from cds_service.engine import rulebook
from cds_service.feedback.models import IssuedCard
from test_feedback import SIGN, table
from test_record_as_it_comes import SCREENED, request, services, text  # noqa: F401 (fixture)
from test_shadow import app_for, overrides, store  # noqa: F401 (fixture)

OCREVUS_ORDER = b.order(b.concept(OCREVUS), rid="ocrelizumab-1")
RITUXAN_ORDER = b.order(b.concept(RITUXAN), rid="rituximab-1")


def sign(client, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post(SIGN, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["cards"]


def of_rule(cards: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [c for c in cards if c["source"]["topic"]["code"] == rule]


def test_each_order_has_its_own_card_citing_its_own_label(client, services):
    cards = sign(client, request(services, orders=[OCREVUS_ORDER, RITUXAN_ORDER], labs=SCREENED))
    ocrevus, rituximab = of_rule(cards, "premedication-missing")
    assert "for Ocrevus" in ocrevus["summary"] and "rituximab" not in text(ocrevus)
    assert ocrevus["source"]["label"].startswith("Ocrevus (ocrelizumab) US prescribing information")
    assert "for rituximab" in rituximab["summary"] and "Ocrevus" not in text(rituximab)
    assert rituximab["source"]["label"].startswith("Rituxan (rituximab) US prescribing information")
    for rule in ("igg-missing", "liver-tests-missing", "neutrophils-missing"):
        assert len(of_rule(cards, rule)) == 2, rule
    assert len({c["uuid"] for c in cards}) == len(cards)


def test_the_day_1_and_day_15_orders_of_one_product_share_their_cards(client, services):
    """Ocrevus's first dose is two infusions, often signed together: a problem of the patient's is shown
    once, not once per infusion."""
    day_15 = b.order(b.concept(OCREVUS), rid="ocrelizumab-2")
    cards = sign(client, request(services, orders=[OCREVUS_ORDER, day_15], labs=SCREENED))
    alone = sign(client, request(services, orders=[OCREVUS_ORDER], labs=SCREENED))
    assert [c["source"]["topic"]["code"] for c in cards] == [c["source"]["topic"]["code"] for c in alone]
    assert len(of_rule(cards, "premedication-missing")) == 1
    uuids = [c["uuid"] for c in cards] + [s["uuid"] for c in cards for s in c.get("suggestions", ())]
    assert len(set(uuids)) == len(uuids)


def test_a_card_uuid_names_its_product_and_is_stable(client, services):
    """The same call gives the same uuids, distinct for the two products; an order renamed between two
    calls (an EHR re-creating its draft) keeps its cards' uuids, so feedback still finds them."""
    def uuids(body: dict[str, Any]) -> dict[tuple[str, bool], str]:
        return {(c["summary"], "Order: Ocrevus" in c["detail"]): c["uuid"] for c in sign(client, body)}

    body = request(services, orders=[OCREVUS_ORDER, RITUXAN_ORDER], labs=SCREENED)
    first = uuids(body)
    assert uuids(body) == first and len(set(first.values())) == len(first)
    assert {ocrevus for _, ocrevus in first} == {True, False}
    renamed = b.order(b.concept(RITUXAN), rid="rituximab-renamed")
    again = uuids({**body, "context": {**body["context"],
                                       "draftOrders": b.fb.bundle([OCREVUS_ORDER, renamed], "collection")}})
    assert again == first


def test_shadow_mode_keeps_every_orders_silent_card(tmp_path, store, services):  # noqa: F811 (fixture)
    book = rulebook.load(overrides=overrides(tmp_path, "rules:\n  premedication-missing:\n    shadow: true\n"))
    cards = sign(app_for(book, store), request(services, orders=[OCREVUS_ORDER, RITUXAN_ORDER], labs=SCREENED))
    assert not of_rule(cards, "premedication-missing") and of_rule(cards, "igg-missing")
    silent = [row for row in table(store, IssuedCard) if row.silent]
    assert [row.rule_id for row in silent] == ["premedication-missing"] * 2
