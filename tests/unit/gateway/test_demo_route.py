"""The demo page's routes (/demo, /demo/static/*, /v1/catalog) over the real service layer, with
the lifespan (Triton, Kafka) not started."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from feature_service.store import InMemoryStore
from features.user_state import FeatureRules
from gateway.app import create_app
from gateway.config import GatewaySettings
from gateway.deps import get_service
from gateway.inventory import InMemoryInventory
from gateway.routes.demo import STATIC_DIR
from gateway.served_model import ServedModel
from gateway.service import RecommendationService


class Unused:
    """Neither the model nor Kafka is called by these routes."""

    def __getattr__(self, name):
        raise AssertionError(f"unexpected call: {name}")


@pytest.fixture
def client(catalog) -> TestClient:
    served = ServedModel(version=3, catalog=catalog, popular_items=["c", "a", "e", "b", "gone"],
                         sequence_length=4)
    service = RecommendationService(served, InMemoryStore(FeatureRules()), Unused(), Unused(),
                                    InMemoryInventory())
    app = create_app(GatewaySettings())
    app.dependency_overrides[get_service] = lambda: service
    return TestClient(app)  # no `with`: no lifespan


def ids(body) -> list[str]:
    return [item["item_id"] for item in body["items"]]


def test_page_is_html_that_loads_its_own_assets(client):
    response = client.get("/demo", params={"user": "7"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assets = re.findall(r'(?:src|href)="(/demo/static/[^"]+)"', html)
    assert sorted(assets) == ["/demo/static/demo.css", "/demo/static/demo.js"]
    for path, kind in [("/demo/static/demo.css", "text/css"), ("/demo/static/demo.js", "javascript")]:
        asset = client.get(path)
        assert asset.status_code == 200 and kind in asset.headers["content-type"]
        assert asset.headers["cache-control"] == "no-cache"
    for marker in ['id="grid"', 'id="recs"', 'id="freshness"', 'data-action="cart"']:
        assert marker in html


def test_static_files_reference_no_other_origin():
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"https?://|//cdn|@import\s+url", text), path.name


@pytest.mark.parametrize("path", ["/demo/static/nope.js", "/demo/static/..%2Fapp.py",
                                  "/demo/static/%2E%2E%2Froutes%2Fdemo.py", "/demo/static/"])
def test_unknown_or_traversing_asset_is_a_404_in_the_error_shape(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_catalog_pages_popular_items_first(client):
    body = client.get("/v1/catalog").json()
    assert ids(body) == ["c", "a", "e", "b", "d", "f"]  # popular first ("gone" is not in the catalog)
    assert body["total"] == 6 and body["offset"] == 0 and body["limit"] == 50
    assert body["model_version"] == 3 and body["categories"] == ["Action", "Comedy", "Drama"]
    assert body["items"][3] == {"item_id": "b", "title": "Bravo", "categories": ["Action", "Comedy"],
                                "year": 1995, "price": None}
    page = client.get("/v1/catalog", params={"offset": 2, "limit": 3}).json()
    assert ids(page) == ["e", "b", "d"] and page["total"] == 6
    assert ids(client.get("/v1/catalog", params={"order": "catalog", "limit": 2}).json()) == ["a", "b"]
    assert client.get("/v1/catalog", params={"offset": 100}).json()["items"] == []


def test_catalog_category_filter(client):
    body = client.get("/v1/catalog", params={"category": "Action"}).json()
    assert ids(body) == ["a", "e", "b"] and body["total"] == 3


@pytest.mark.parametrize("params", [{"category": "Westerns"}, {"limit": 0}, {"limit": 201},
                                    {"offset": -1}, {"order": "random"}, {"category": ""}])
def test_catalog_rejects_bad_parameters_with_422(client, params):
    response = client.get("/v1/catalog", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_request"


def test_catalog_is_documented_and_the_page_is_not(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/demo")]
    operation = paths["/v1/catalog"]["get"]
    assert {"200", "422", "503"} <= set(operation["responses"])
