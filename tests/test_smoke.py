"""The spine, end to end through HTTP: discovery, a call, the basic error statuses."""


def test_discovery_lists_one_service_per_hook(client):
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = response.get_json()["services"]
    assert sorted(s["hook"] for s in services) == ["order-select", "order-sign", "patient-view"]
    assert len({s["id"] for s in services}) == 3


def test_unknown_service_is_404_with_json(client):
    response = client.post("/cds-services/nope", json={})
    assert response.status_code == 404
    assert "error" in response.get_json()


def test_body_that_is_not_an_object_is_400(client):
    response = client.post("/cds-services/cd20-order-sign", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400
