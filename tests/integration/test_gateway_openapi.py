"""schemathesis against the gateway's /openapi.json: generated requests, valid and invalid, over
real HTTP against the real broker, find no server error and no answer the document does not
describe.

Bounded: a fixed number of examples per operation and mode (CXLEDGER_FUZZ_EXAMPLES, default
25), no example database, so the test takes seconds and does the same work on every run.
"""

from __future__ import annotations

import json
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance,
                                               response_schema_conformance,
                                               status_code_conformance)

from producers.api_keys import new_api_key
from producers.gateway import Gateway

pytestmark = pytest.mark.integration

KEY, ENTRY = new_api_key("fuzzer", rate=1_000_000, burst=1_000)
EXAMPLES = int(os.environ.get("CXLEDGER_FUZZ_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx, value) -> bytes:
    """The batch route's body is text (one event per line); send what was generated as is."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


@pytest.fixture
def gateway(settings):
    with Gateway(settings.with_(gateway_keys=(ENTRY,), gateway_max_events=50,
                                gateway_ack_timeout=5.0), port=0) as gw:
        yield gw


def test_generated_requests_find_no_server_error(gateway):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    auth = {"Authorization": f"Bearer {KEY}"}
    ran = []
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.body:
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
                                 phases=[Phase.explicit, Phase.generate, Phase.shrink],
                                 suppress_health_check=list(HealthCheck))
            def exercise(case):
                response = case.call(headers=auth)
                case.validate_response(response, checks=CHECKS, headers=auth)
                ran.append(response.status_code)

            exercise()
    assert len(ran) >= EXAMPLES * 4
    assert {202, 422, 400} <= set(ran), sorted(set(ran))
