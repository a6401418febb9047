"""The live demo page in a real headless Chromium (Debian's, driven by Playwright) against a real
gateway process, Triton and Kafka: load the page, click, watch the recommendations panel follow,
and a view show the viewed item's similar items (or a short note when there are none to show).

A screenshot is saved to build/test-artifacts/demo.png (also when the test fails)."""

from __future__ import annotations

import json
import re
import urllib.request
import uuid
from pathlib import Path

import pytest

from stack.gateway import GatewayProcess
from stack.testing import require_service
from tests.support.browser import chromium_path, chromium_unavailable_reason, headless_page
from tests.support.gateway import gateway_settings

REPO_ROOT = Path(__file__).resolve().parents[3]
SCREENSHOT = REPO_ROOT / "build" / "test-artifacts" / "demo.png"
USER = "7"
# The page gives a push 2 s before it refetches instead, and a view's refetch 5 s to see the
# features move: budgets for a person watching, races for a test on a busy 2-core box, where *how*
# the panel got its answer is what is checked. The page's URL parameters lengthen them (still
# within wait_for_click_shown's 15 s).
PATIENT_BUDGETS = "push_wait_ms=10000&poll_for_ms=12000"
SIMILAR_K = 6  # the page's
SIMILAR_URL = re.compile(r"/v1/items/[^/]+/similar")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Checked before the (session) model is trained: a missing browser costs nothing."""
    require_service(chromium_unavailable_reason())
    return chromium_path()


def panel_ids(page) -> list[str]:
    return page.eval_on_selector_all("#recs li", "nodes => nodes.map(n => n.dataset.itemId)")


def similar_ids(page) -> list[str]:
    return page.eval_on_selector_all("#similar li", "nodes => nodes.map(n => n.dataset.itemId)")


def wait_for_similar(page, item_id: str, state: str) -> None:
    """The similar panel has settled on ``item_id``'s answer (``state``: ok, degraded, not-served,
    not-found, error)."""
    page.wait_for_selector(f"#similar-panel[data-item-id='{item_id}'][data-state='{state}']",
                           timeout=15_000)


def rest_similar(gateway_url: str, item_id: str) -> dict:
    url = f"{gateway_url}/v1/items/{item_id}/similar?k={SIMILAR_K}&user_id={USER}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def view_with_answer(page, nth: int, status: int, body: dict) -> str:
    """View the grid's ``nth`` card with the similar-items request answered by ``status``/``body``
    (what a gateway says for an old repository, an unknown item, a slow model)."""
    page.route(SIMILAR_URL, lambda route: route.fulfill(status=status, content_type="application/json",
                                                        body=json.dumps(body)))
    item = page.get_attribute(f"#grid .card:nth-child({nth})", "data-item-id")
    page.click(f"#grid .card[data-item-id='{item}'] [data-action=view]")
    return item


def check_similar_notes(page) -> None:
    """501, 404 and a degraded answer: a one-line note, never a broken panel."""
    for nth, status, state, words in ((5, 501, "not-served", "predates"),
                                      (6, 404, "not-found", "not in the served model's catalog")):
        item = view_with_answer(page, nth, status, {"error": {"code": "x", "message": "no"}})
        wait_for_similar(page, item, state)
        page.unroute(SIMILAR_URL)
        assert similar_ids(page) == [] and words in page.inner_text("#similar-note")
        assert page.is_visible("#similar-note")
    fallback = [{"item_id": "1", "title": "Toy Story (1995)", "categories": ["Animation"], "score": None}]
    item = view_with_answer(page, 7, 200, {"request_id": "r", "item_id": "x", "items": fallback,
                                           "model_version": 1, "source": "popular", "degraded": True})
    wait_for_similar(page, item, "degraded")
    page.unroute(SIMILAR_URL)
    assert similar_ids(page) == ["1"] and "popular items" in page.inner_text("#similar-note")
    assert "degraded" in page.inner_text("#similar-meta")


def wait_for_click_shown(page, event_type: str, item_id: str) -> dict:
    """The freshness box names the click whose recommendations the panel shows."""
    page.wait_for_function(
        "([type, item]) => { const d = document.querySelector('#freshness').dataset;"
        " return d.eventType === type && d.itemId === item; }",
        arg=[event_type, item_id], timeout=15_000)
    return page.eval_on_selector("#freshness", "n => ({...n.dataset, text: n.innerText})")


def test_clicks_on_the_demo_page_change_the_recommendations_panel(chromium, exported, triton, kafka,
                                                                   tmp_path):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    # (model-answer timeouts: the panel must show the model's answers, not a slow call's fallback)
    settings = gateway_settings(exported, triton, kafka, topic)
    with GatewayProcess(settings, log_path=tmp_path / "gateway.log") as gateway, \
            headless_page(gateway.url, SCREENSHOT) as watched:
        page, elsewhere, errors = watched.page, watched.elsewhere, watched.errors
        page.goto(f"{gateway.url}/demo?user={USER}&{PATIENT_BUDGETS}")
        page.wait_for_selector("#grid .card [data-action=view]")
        page.wait_for_selector("#recs li")
        page.wait_for_selector("#stream-status[data-state=connected]")
        before = panel_ids(page)
        assert len(before) == 10
        assert page.inner_text("#rec-meta").startswith("model")  # a known user

        # a view pushes nothing: the page refetches until the features moved
        viewed = page.get_attribute("#grid .card:nth-child(3)", "data-item-id")
        title = page.get_attribute("#grid .card:nth-child(3)", "data-title")
        page.click(f"#grid .card[data-item-id='{viewed}'] [data-action=view]")
        shown = wait_for_click_shown(page, "view", viewed)
        assert shown["origin"] == "refetch" and int(shown["ms"]) >= 0
        assert viewed not in panel_ids(page)  # seen items are not recommended

        # ... and shows the items like the viewed one, as the REST endpoint lists them
        wait_for_similar(page, viewed, "ok")
        similar = similar_ids(page)
        assert len(similar) == SIMILAR_K and viewed not in similar
        rest = rest_similar(gateway.url, viewed)
        assert (rest["source"], rest["degraded"]) == ("model", False), rest
        assert similar == [i["item_id"] for i in rest["items"]]
        assert page.inner_text("#similar-panel h2") == f"Similar to {title}"
        assert not page.is_visible("#similar-note")

        # add the top recommendation to the cart: the SSE push brings the new panel
        middle = panel_ids(page)
        carted = middle[0]
        page.click(f"#recs li[data-item-id='{carted}'] [data-action=cart]")
        shown = wait_for_click_shown(page, "cart", carted)
        after = panel_ids(page)
        assert shown["origin"] == "SSE push", shown
        assert carted not in after and after != middle and len(after) == 10
        assert int(shown["ms"]) >= 0 and "features written +" in shown["text"]
        assert "pushed +" in shown["text"]
        changes = page.inner_text("#changes")
        assert "−" in changes and "+" in changes  # what left and what entered
        assert page.locator("#recs li.entered").count() >= 1
        assert page.get_attribute("#recs-panel", "data-origin") == "SSE push"
        assert not elsewhere, f"the page loaded from other origins: {elsewhere}"
        assert not errors, errors

        check_similar_notes(page)
        # Chromium logs every 4xx/5xx response; anything else is the page's fault
        assert all(e.startswith("Failed to load resource") for e in errors), errors
    assert SCREENSHOT.stat().st_size > 10_000
