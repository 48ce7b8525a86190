"""The schema catalogue and BACKWARD_TRANSITIVE compatibility of the kept versions."""

import json
import shutil
from pathlib import Path

import pytest

from schemas.catalogue import DERIVED_TYPES, OPERATIONAL_KEYS, CatalogueError, load_catalogue
from schemas.compatibility import check_backward_transitive

DOMAIN_TYPES = {
    "contact.completed", "complaint.filed", "complaint.acknowledged", "complaint.escalated",
    "complaint.resolved", "complaint.feedback_delivered", "complaint.followed_up",
    "complaint.closed", "complaint.reopened", "survey.responded", "billing.period_closed",
    "plan.changed", "account.port_out_requested", "account.cancellation_requested",
    "tier.change_decided", "satisfaction.scored", "complaint.sla_breached", "churn.risk_changed",
    "tier.change_proposed", "tier.changed",
    # service halls, feedback, incidents and quality control
    "hall.visit_completed", "hall.survey_responded", "supervision.onsite_shift",
    "quality.spot_check_recorded", "staff.exam_scored", "feedback.received", "feedback.handled",
    "feedback.result_reported", "incident.detected", "incident.resolved",
    "hall.key_improvement_flagged", "hall.key_improvement_cleared", "feedback.sla_breached",
}
ENVELOPE = ["event_id", "event_type", "occurred_at", "customer_id", "channel", "city",
            "agent_id", "correlation_id"]
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue()


def test_every_contract_type_has_a_schema(catalogue):
    assert DOMAIN_TYPES <= set(catalogue.event_types)
    assert DERIVED_TYPES <= set(catalogue.event_types)


def test_schemas_share_the_envelope_and_document_every_field(catalogue):
    for event_type in catalogue.event_types:
        latest = catalogue.latest(event_type)
        envelope = [f for f in ENVELOPE if f != "customer_id" or event_type not in OPERATIONAL_KEYS]
        assert list(latest.field_names[: len(envelope)]) == envelope, event_type
        if event_type in DERIVED_TYPES:
            assert "rules_version" in latest.field_names, event_type
        assert latest.definition["namespace"].startswith("cxledger."), event_type
        assert latest.definition.get("doc"), event_type
        for f in latest.definition["fields"]:
            assert f.get("doc"), f"{event_type}.{f['name']} has no doc"


def test_time_and_money_use_logical_types(catalogue):
    occurred = catalogue.latest("contact.completed").definition["fields"][2]
    assert occurred["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    spend = next(f for f in catalogue.latest("billing.period_closed").definition["fields"]
                 if f["name"] == "spend")
    assert spend["type"]["logicalType"] == "decimal" and spend["type"]["scale"] == 2


def test_enums_have_defaults_so_they_can_grow(catalogue):
    def enums(node):
        if isinstance(node, dict):
            if node.get("type") == "enum":
                yield node
            for v in node.values():
                yield from enums(v)
        elif isinstance(node, list):
            for v in node:
                yield from enums(v)

    found = 0
    for event_type in catalogue.event_types:
        for enum in enums(catalogue.latest(event_type).definition):
            assert enum.get("default") in enum["symbols"], (event_type, enum["name"])
            found += 1
    assert found > 20


def test_the_kept_history_is_backward_transitive(catalogue):
    assert check_backward_transitive(catalogue) == []


def _copy_schemas(tmp_path):
    shutil.copytree(SCHEMAS / "avro", tmp_path / "avro")
    shutil.copy(SCHEMAS / "ids.json", tmp_path / "ids.json")
    return tmp_path / "avro", tmp_path / "ids.json"


def _add_version(avro_dir, ids_file, event_type, change):
    definition = json.loads((avro_dir / event_type / "v1.avsc").read_text())
    change(definition)
    (avro_dir / event_type / "v2.avsc").write_text(json.dumps(definition))
    ids = json.loads(ids_file.read_text())
    ids["ids"][event_type]["2"] = 999
    ids_file.write_text(json.dumps(ids))


def test_adding_an_optional_field_is_compatible(tmp_path):
    avro_dir, ids_file = _copy_schemas(tmp_path)
    _add_version(avro_dir, ids_file, "complaint.filed", lambda d: d["fields"].append(
        {"name": "product", "type": ["null", "string"], "default": None, "doc": "Product."}))
    assert check_backward_transitive(load_catalogue(avro_dir, ids_file)) == []


def test_adding_a_required_field_is_caught(tmp_path):
    avro_dir, ids_file = _copy_schemas(tmp_path)
    _add_version(avro_dir, ids_file, "complaint.filed", lambda d: d["fields"].append(
        {"name": "product", "type": "string", "doc": "Product."}))
    problems = check_backward_transitive(load_catalogue(avro_dir, ids_file))
    assert len(problems) == 1
    assert "complaint.filed" in str(problems[0]) and "product" in str(problems[0])


def test_changing_a_field_type_is_caught(tmp_path):
    avro_dir, ids_file = _copy_schemas(tmp_path)

    def to_string(d):
        next(f for f in d["fields"] if f["name"] == "transfers")["type"] = "string"

    _add_version(avro_dir, ids_file, "contact.completed", to_string)
    assert len(check_backward_transitive(load_catalogue(avro_dir, ids_file))) == 1


def test_a_version_without_an_id_is_an_error(tmp_path):
    avro_dir, ids_file = _copy_schemas(tmp_path)
    shutil.copy(avro_dir / "plan.changed" / "v1.avsc", avro_dir / "plan.changed" / "v2.avsc")
    with pytest.raises(CatalogueError, match="plan.changed.*no schema id"):
        load_catalogue(avro_dir, ids_file)


def test_ids_are_unique_and_stable(catalogue):
    ids = [v.schema_id for vs in catalogue.versions.values() for v in vs]
    assert len(ids) == len(set(ids))
    assert catalogue.latest("contact.completed").schema_id == 14


def test_operational_events_have_no_customer_and_a_required_key_of_their_own(catalogue):
    """domain.md: operational events have no customer_id; they are keyed by hall_id, agent_id,
    incident_id (a spot check by the unit it checked). Every other event has a customer_id."""
    assert set(OPERATIONAL_KEYS) == {"supervision.onsite_shift", "quality.spot_check_recorded",
                                     "staff.exam_scored", "incident.detected",
                                     "incident.resolved"}
    for event_type in catalogue.event_types:
        fields = {f["name"]: f for f in catalogue.latest(event_type).definition["fields"]}
        if event_type in OPERATIONAL_KEYS:
            assert "customer_id" not in fields, event_type
            assert fields[OPERATIONAL_KEYS[event_type]]["type"] == "string", event_type
        else:
            assert fields["customer_id"]["type"] == "string", event_type


def test_window_partials_v2_adds_service_requests_with_defaults(catalogue):
    versions = catalogue.versions["satisfaction.window_updated"]
    assert [v.version for v in versions] == [1, 2]
    added = [f for f in versions[1].definition["fields"]
             if f["name"] not in versions[0].field_names]
    assert [(f["name"], f["default"]) for f in added] == [("service_requests", 0),
                                                            ("service_requests_met", 0)]
