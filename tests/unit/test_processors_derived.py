"""Deterministic derived-event ids and rounding."""

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from processors.derived import NAMESPACE, derived_id, name_id, round2


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_name_id_is_uuid5_of_the_namespace(name):
    assert name_id(name) == str(uuid.uuid5(NAMESPACE, name))


def test_derived_id_joins_its_parts_with_a_bar():
    assert derived_id("complaint.sla_breached", "2025.10-1", "c-1", "q1", "resolution", 2) == str(
        uuid.uuid5(NAMESPACE, "complaint.sla_breached|2025.10-1|c-1|q1|resolution|2"))
    assert derived_id("a", "b") != derived_id("a", "c")


def test_round2_is_half_up_on_the_decimal_value():
    assert round2(87.375) == 87.38
    assert round2(86.965) == 86.97          # float 86.96499999... still rounds as by hand
    assert round2(0.3 * 89.2 + 0.4 * 85.7 + 0.2 * 90.5 + 0.1 * 82.4) == 87.38
    assert round2(58.5) == 58.5 and round2(51.75) == 51.75 and round2(0.004) == 0.0
