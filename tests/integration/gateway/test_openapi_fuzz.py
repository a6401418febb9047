"""Schemathesis against the running gateway's OpenAPI document (real Triton, Kafka): generated
requests, valid and invalid, to every operation: never a 5xx, and every response matches what the
document says (status codes, content types, bodies)."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from stack.gateway import GatewayProcess
from tests.support.gateway import gateway_settings

TOKEN = "fuzz-admin-token"


@pytest.fixture(scope="module")
def gateway(exported, triton, kafka, tmp_path_factory):
    topic = f"events-{uuid.uuid4().hex[:8]}"
    settings = gateway_settings(exported, triton, kafka, topic, admin_token=TOKEN)
    with GatewayProcess(settings, log_path=tmp_path_factory.mktemp("fuzz") / "gateway.log") as gw:
        yield gw


@pytest.fixture(scope="module")
def api_schema(gateway):
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")


# An SSE stream never ends: tested on its own in test_push.py. (Filters go on the lazy schema:
# from_fixture replaces those of the fixture's schema with its own.)
schema = schemathesis.pytest.from_fixture("api_schema").exclude(tag="push")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_responses_match_the_document(case, gateway):
    headers = {"Authorization": f"Bearer {TOKEN}"} if case.path.startswith("/v1/admin") else None
    case.call_and_validate(base_url=gateway.url, headers=headers, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance,
        response_schema_conformance,
    ])
