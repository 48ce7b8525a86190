"""The new event types in the gateway's OpenAPI document (generated from the contract)."""

from producers.openapi import openapi_document

NEW = {"hall.visit_completed": "HallVisitCompleted", "hall.survey_responded": "HallSurveyResponded",
       "supervision.onsite_shift": "SupervisionOnsiteShift",
       "quality.spot_check_recorded": "QualitySpotCheckRecorded",
       "staff.exam_scored": "StaffExamScored", "feedback.received": "FeedbackReceived",
       "feedback.handled": "FeedbackHandled", "feedback.result_reported": "FeedbackResultReported",
       "incident.detected": "IncidentDetected", "incident.resolved": "IncidentResolved"}
OPERATIONAL = {"supervision.onsite_shift": "hall_id", "quality.spot_check_recorded": "unit_id",
               "staff.exam_scored": "agent_id", "incident.detected": "incident_id",
               "incident.resolved": "incident_id"}


def test_every_new_interaction_type_is_published_through_the_gateway():
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    mapping = schemas["Event"]["discriminator"]["mapping"]
    for event_type, name in NEW.items():
        assert mapping[event_type] == f"#/components/schemas/{name}"
        schema = schemas[name]
        assert schema["properties"]["event_type"]["enum"] == [event_type]
        if event_type in OPERATIONAL:
            key = OPERATIONAL[event_type]
            assert "customer_id" not in schema["properties"], event_type
            assert key in schema["required"] and f"keyed by {key}" in schema["description"]
        else:
            assert "customer_id" in schema["required"], event_type
    for derived in ("hall.key_improvement_flagged", "hall.survey_month_closed",
                    "feedback.sla_breached"):
        assert derived not in mapping


def test_the_value_rules_reach_the_document():
    schemas = openapi_document()["components"]["schemas"]
    item = schemas["HallSurveyResponded"]["properties"]["waiting"]
    assert (item["minimum"], item["maximum"], item["nullable"]) == (1, 10, True)
    cities = schemas["IncidentDetected"]["properties"]["cities"]
    assert cities["minItems"] == 1 and cities["items"]["pattern"] == "^(?:[a-z][a-z0-9_]*)$"
    assert schemas["SupervisionOnsiteShift"]["properties"]["unresolved"]["minimum"] == 0
    assert schemas["QualitySpotCheckRecorded"]["properties"]["unit_type"]["enum"] == [
        "district", "hall", "agent"]
