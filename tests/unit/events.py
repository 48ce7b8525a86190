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
