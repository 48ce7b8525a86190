"""Pure domain folds of cxledger, one module per rule set of ``domain.md``.

- ``rules``        the rules file (``rules/default.toml``) as a frozen, versioned ``Rules``
- ``satisfaction`` composite (weights, city profiles, renormalisation), NPS, ``satisfaction.scored``
- ``complaints``   lifecycle, SLA deadlines, breaches and auto-escalation
- ``churn``        churn signals, score, levels, ``churn.risk_changed``
- ``tiers``        spend basis, upgrades, hysteresis, approvals
- ``windows``      per-partition 1m / 1d window partials, p90 from buckets
- ``derived``      deterministic ids of derived events
- ``ledger``       ``PartitionFold``: one partition's state, the single place that orders the rules

No I/O here (the rules file aside): the Kafka/faust adapters (``app``, ``batch``) feed
``PartitionFold`` with events in the record form and publish what it returns.
"""
