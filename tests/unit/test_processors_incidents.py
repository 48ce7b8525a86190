"""Incident tagging, by hand (processors.incidents): a contact or complaint filed in an affected
city while the incident is open (detected_at <= occurred_at < resolved_at) carries its id."""

from processors.incidents import Incident, incidents_from, tags
from tests.unit.processors_factories import HOUR, T0, contact, filed, record


def incident(event_type, at, incident_id="inc-1", cities=("urumqi", "lanzhou"), level=1):
    return record(event_type, at, channel="phone", city=cities[0], incident_id=incident_id,
                  level=level, service="network", cities=list(cities))


def test_contacts_and_complaints_in_an_affected_city_while_open_are_tagged():
    known = list(incidents_from([incident("incident.resolved", T0 + 3 * HOUR),  # any order
                                 incident("incident.detected", T0)]).values())
    assert known == [Incident("inc-1", 1, "network", ("urumqi", "lanzhou"), T0, T0 + 3 * HOUR)]
    assert tags(contact(T0, city="lanzhou"), known) == ["inc-1"]            # at detection
    assert tags(filed(T0 + HOUR, "cp-1", city="urumqi"), known) == ["inc-1"]
    assert tags(contact(T0 + 3 * HOUR, city="urumqi"), known) == []          # resolved by then
    assert tags(contact(T0 - 1, city="urumqi"), known) == []                 # not yet detected
    assert tags(contact(T0 + HOUR, city="beijing"), known) == []             # another city
    survey = record("survey.responded", T0 + HOUR, city="urumqi", survey_id="s-1")
    assert tags(survey, known) == []                                         # not a contact


def test_an_open_incident_tags_until_it_is_resolved_and_overlaps_give_both_ids():
    known = list(incidents_from([incident("incident.detected", T0),
                                 incident("incident.detected", T0 + HOUR, "inc-2",
                                          cities=("lanzhou",), level=3)]).values())
    assert known[0].resolved_at is None
    assert tags(contact(T0 + 100 * HOUR, city="lanzhou"), known) == ["inc-1", "inc-2"]
