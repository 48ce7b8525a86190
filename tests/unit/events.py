"""Realistic JSON-form events for the unit tests."""

import itertools
import uuid

_n = itertools.count(1)


def envelope(event_type, **kw):
    event = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": "2025-03-04T09:15:30.250+08:00",
        "customer_id": "c-000042",
        "channel": "phone",
        "city": "lanzhou",
        "agent_id": "a-17",
    }
    event.update(kw)
    return event


def contact(**kw):
    fields = dict(contact_id=f"k-{next(_n)}", direction="inbound", category="billing",
                  handler="agent", wait_seconds=95, first_response_seconds=120,
                  handle_seconds=410, transfers=1, resolved_first_contact=False, intent="none")
    return envelope("contact.completed", **{**fields, **kw})


def survey(**kw):
    fields = dict(survey_id=f"s-{next(_n)}", subject_id="k-1", response_speed=89.2,
                  resolution_efficiency=85.7, attitude=90.5, follow_up=82.4, nps=9)
    return envelope("survey.responded", **{**fields, **kw})


def billing(**kw):
    fields = {"period": "2025-02", "spend": "1200.00", "plan_code": "5g-199"}
    fields.update(kw)
    return envelope("billing.period_closed", **fields)


# -- service halls, feedback, incidents and quality control ------------------------------------
OPERATIONAL = ("supervision.onsite_shift", "quality.spot_check_recorded", "staff.exam_scored",
               "incident.detected", "incident.resolved")


def operational(event_type, **kw):
    """An operational event: no customer_id (it is keyed by hall, unit, agent or incident)."""
    event = envelope(event_type, **kw)
    del event["customer_id"]
    return event


def hall_visit(**kw):
    fields = dict(visit_id=f"v-{next(_n)}", hall_id="urumqi-nanhudong", district="urumqi-xinshi",
                  wait_seconds=420, served_at="handheld", business_type="broadband",
                  handling_seconds=600, resolved_on_site=True, greeted=True, need_asked=True)
    return envelope("hall.visit_completed", channel="service_hall", city="urumqi",
                    **{**fields, **kw})


def hall_survey(**kw):
    fields = dict(survey_id=f"hs-{next(_n)}", hall_id="urumqi-nanhudong", visit_id="v-1",
                  overall=10, environment=9, waiting=8, handling=10, staff_attitude=10,
                  valid=True)
    return envelope("hall.survey_responded", channel="sms", city="urumqi", **{**fields, **kw})


def onsite_shift(**kw):
    fields = dict(shift_id=f"sh-{next(_n)}", hall_id="urumqi-nanhudong", manager_id="m-xinshi-1",
                  customers_received=12, unresolved=0, on_duty=True, handheld_used=True)
    return operational("supervision.onsite_shift", channel="service_hall", city="urumqi",
                       **{**fields, **kw})


def spot_check(**kw):
    fields = dict(check_id=f"q-{next(_n)}", unit_type="hall", unit_id="urumqi-beijinglu",
                  sampled=20, passed=17, score=95.0)
    return operational("quality.spot_check_recorded", channel="service_hall", city="urumqi",
                       **{**fields, **kw})


def exam(**kw):
    fields = dict(exam_id=f"ex-{next(_n)}", hall_id="urumqi-beijinglu", score=98.5)
    return operational("staff.exam_scored", channel="service_hall", city="urumqi",
                       **{"agent_id": "AL002010", **fields, **kw})


def feedback(event_type="feedback.received", **kw):
    return envelope(event_type, **{"feedback_id": "fb-1", **kw})


def incident(event_type="incident.detected", **kw):
    fields = dict(incident_id="inc-1", level=1, service="network", cities=["urumqi", "lanzhou"])
    return operational(event_type, **{**fields, **kw})
