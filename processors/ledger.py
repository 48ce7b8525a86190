"""The fold of one Kafka partition of the ledger: the single place that orders the rules.

The ledger is keyed by customer_id, so a partition holds whole customers and sees each
customer's events in order. :meth:`PartitionFold.apply` takes one event in the record form
and returns the derived events it causes, in this fixed order:

a. "now" is event time: the partition clock becomes max(clock, occurred_at);
b. every complaint deadline passed (deadline < clock) fires, in (deadline, customer,
   complaint, sla) order: ``complaint.sla_breached`` (+ escalation), then the churn risk of
   that customer is re-evaluated at the deadline;
c. the event is applied to its customer: complaints (arming deadlines), tiers
   (billing / decisions; before scoring so the tier is current), satisfaction
   (``satisfaction.scored``), then churn, last, at the event's time, fed with the event and
   the derived events it produced; deadlines armed by the event that are already passed
   fire right after it;
d. the window partials are fed (contacts, scores, complaints).

Also on the partition (domain.md, "Service halls, feedback, incidents and quality control"):
feedback deadlines (processors.feedback: received -> handled 24 h, result 72 h) live in the
customer's state and fire with the complaint deadlines, after them, in (deadline, customer,
feedback, sla) order; a breach touches nothing else. The hall SMS survey partials
(processors.halls.HallSurveyMonths) are partition state like the windows; the clock reaching a
month's end closes it (step a). Operational events (supervision, quality, staff, incidents)
have no customer: the fold moves the clock with them and keeps nothing of them (their metrics
are ClickHouse views over the ledger); hall visits are remembered for duplicate detection only.

Duplicates: the ids of the partition's latest customer events (524,288 at least) are remembered
(``folded``, processors.folded_ids), and an id met again is not folded: the ledger keeps the
first version of an id for good, so live processing agrees with a replay of it whenever the
duplicate comes (a producer's retry, a redelivery, a file published again).

Bounded state: when the partition clock enters a new UTC day, ``sweep`` forgets what the rules
can no longer use: churn signal times that have expired, closed complaints past their
retention, and customers left with nothing but the state a new customer starts with (folding
them again from scratch gives the same result). The sweep happens at the same points of event
time in the live processors and in a replay. A customer whose events change nothing the rules
keep (a plain contact, a satisfied survey) gets no state at all.

``advance_clock`` moves an idle partition's clock (live mode; see :func:`live_clock_target`);
``drain_windows`` emits the window partials touched since the last drain and
``drain_complaints`` the current state of every complaint changed since the last drain.

State is plain data per customer (``customer_state`` / ``load_customer``) plus a partition
snapshot (clock and windows) and the ids folded (``folded``, written in chunks by
processors.changelog); the deadline heap is rebuilt from restored complaints.
``apply`` expects a validated record: unknown or derived event types are counted in
``ignored`` and produce nothing.
"""

from __future__ import annotations

import heapq
from collections import Counter
from typing import Iterable, Mapping, Sequence

from processors import churn, complaints, feedback, satisfaction, tiers
from processors.complaints import SLA_RANK, SLAS
from processors.folded_ids import FoldedIds, id_key, legacy_keys
from processors.halls import HallSurveyMonths
from processors.rules import Rules, load_rules
from processors.windows import WindowAggregator, bucket_of
from schemas.catalogue import OPERATIONAL_KEYS

STATE_FORMAT = 1
_DAY_MS = 86_400_000
_CHURN_INTENTS = frozenset({"port_out", "cancel", "downgrade"})


def _new_customer() -> dict:
    """One customer's state: complaints (by id), tier state, churn state. Plain dicts and
    tuples only, so most customers hold nothing the cycle collector has to track."""
    return {"complaints": {}, "tier": tiers.new_state(), "churn": churn.new_state()}


_NEW_TIER = tiers.new_state()
_NEW_CHURN = churn.new_state()


def _is_new(cust: dict) -> bool:
    """True when a customer's state is what a customer with no events starts with."""
    return (not cust["complaints"] and cust["tier"] == _NEW_TIER
            and cust["churn"] == _NEW_CHURN and not cust.get("feedback"))


def live_clock_target(clock: int, wall_ms: int, rules: Rules) -> int | None:
    """Where a live, idle partition's clock may move: wall time less the allowed lateness,
    only while the partition's event time is within ``live_max_lag`` of wall time.
    None when it must not move (backfill, replay, ``demo --input`` never call this)."""
    if wall_ms - clock > rules.clock.live_max_lag_ms:
        return None
    target = wall_ms - rules.clock.allowed_lateness_ms
    return target if target > clock else None


class PartitionFold:
    """State and rules of one ledger partition (see the module docstring for the order)."""

    def __init__(self, rules: Rules | None = None, partition: int = 0):
        self.rules = rules if rules is not None else load_rules()
        self.partition = partition
        self.clock = 0
        # The ledger offset after the last message folded here (the worker's bookkeeping:
        # a restored state knows which input it already holds; replay leaves it at 0).
        self.position: int | None = 0
        self.customers: dict[str, dict] = {}
        self.folded = FoldedIds()  # the latest customer event ids folded here ("Duplicates")
        self.windows = WindowAggregator(self.rules, partition)
        self.halls = HallSurveyMonths(self.rules, partition)
        self.ignored: Counter[str] = Counter()
        self.duplicates = 0  # redelivered events (same event_id) not folded again
        self._deadlines: list[tuple[int, str, str, int, int]] = []
        self._feedback_deadlines: list[tuple[int, str, str, int]] = []
        self._dirty: set[str] = set()
        self._forget_next: list[tuple] = []  # window rows forgotten at the last window_changes
        # Changelog keys of window rows read back from records of one row each (the layout
        # before buckets): rewritten as buckets, then deleted (window_changes).
        self.legacy_window_keys: list[tuple] = []
        self._legacy_delete_next: list[tuple] = []
        self._complaints_touched: set[tuple[str, str]] = set()  # since the last drain
        self._pruned_undrained: list[dict] = []  # final states of complaints pruned before a drain
        cr = self.rules.churn
        self._bounced_min = cr.bounced_min_transfers
        self._low_satisfaction = cr.low_satisfaction_below
        self._detractor = cr.detractor_at_most
        self._handlers = {
            "contact.completed": self._contact,
            "survey.responded": self._survey,
            "billing.period_closed": self._billing,
            "tier.change_decided": self._decision,
            "plan.changed": self._signal_only,
            "account.port_out_requested": self._signal_only,
            "account.cancellation_requested": self._signal_only,
        }
        for etype in complaints.COMPLAINT_EVENTS:
            self._handlers[etype] = self._complaint
        for etype in feedback.FEEDBACK_EVENTS:
            self._handlers[etype] = self._feedback
        self._handlers["hall.survey_responded"] = self._hall_survey
        self._handlers["hall.visit_completed"] = self._nothing
        for etype in OPERATIONAL_KEYS:
            self._handlers[etype] = self._nothing

    # -- the fold -----------------------------------------------------------------------------

    def apply(self, event: Mapping) -> list[dict]:
        """Fold one event; returns the derived events (windows excepted: see drain_windows)."""
        out: list[dict] = []
        at = event["occurred_at"]
        cid = event.get("customer_id")  # None: an operational event
        if cid:
            key = id_key(event["event_id"])
            if key in self.folded:
                self.duplicates += 1
                return out
        if at > self.clock:
            new_day = at // _DAY_MS != self.clock // _DAY_MS and self.clock
            self.clock = at
            self.windows.clock = at
            if at >= self.halls.month_end:
                self.halls.advance(at)
            deadlines = self._deadlines
            if (deadlines and deadlines[0][0] < at) or (
                    self._feedback_deadlines and self._feedback_deadlines[0][0] < at):
                self._fire_due(out)
            if new_day:  # after the deadlines before ``at`` fired with all they could use
                self.sweep(at)
        handler = self._handlers.get(event["event_type"])
        if handler is None:
            self.ignored[event["event_type"]] += 1
            return out
        handler(event, at, out)
        if cid:
            self.folded.add(key)
        return out

    def apply_all(self, events: Iterable[Mapping]) -> list[dict]:
        out: list[dict] = []
        for event in events:
            out.extend(self.apply(event))
        return out

    def sweep(self, now: int) -> None:
        """Forget what the rules can no longer use as of ``now`` (see the module docstring)."""
        retention = self.rules.complaints
        churn_rules = self.rules.churn
        for cid, cust in list(self.customers.items()):
            changed = False
            ch = cust["churn"]
            if ch["last"] or ch["filed"]:
                before = (len(ch["last"]), len(ch["filed"]))
                churn.prune(ch, now, churn_rules)
                changed |= before != (len(ch["last"]), len(ch["filed"]))
            if cust.get("feedback"):
                if feedback.prune(cust["feedback"], now, self.rules.feedback):
                    changed = True
                if not cust["feedback"]:
                    del cust["feedback"]
            if cust["complaints"]:
                for gone in complaints.prune(cust["complaints"], now, retention):
                    changed = True
                    key = (cid, gone["complaint_id"])
                    if key in self._complaints_touched:
                        self._complaints_touched.discard(key)
                        self._pruned_undrained.append(
                            complaints.state_changed(gone, cid, self.rules.version))
            if changed and _is_new(cust):
                del self.customers[cid]
            if changed:
                self._dirty.add(cid)

    def advance_clock(self, now_ms: int) -> list[dict]:
        """Move the clock to ``now_ms`` without an event (idle partition, live mode only)
        and fire the deadlines it passes."""
        out: list[dict] = []
        if now_ms > self.clock:
            new_day = now_ms // _DAY_MS != self.clock // _DAY_MS and self.clock
            self.clock = now_ms
            self.windows.clock = now_ms
            if now_ms >= self.halls.month_end:
                self.halls.advance(now_ms)
            self._fire_due(out)
            if new_day:
                self.sweep(now_ms)
        return out

    def drain_windows(self) -> list[dict]:
        """The window partials touched since the last drain: ``satisfaction.window_updated``
        (1m, 1d), then the hall survey months (``hall.survey_month_updated``) and the months
        the clock closed (``hall.survey_month_closed``)."""
        return self.windows.drain() + self.halls.drain()

    def drain_complaints(self) -> list[dict]:
        """``complaint.state_changed`` for every complaint changed since the last drain
        (by an event or a breach), sorted by (customer, complaint)."""
        out = self._pruned_undrained
        self._pruned_undrained = []
        version = self.rules.version
        for cid, complaint_id in sorted(self._complaints_touched):
            cust = self.customers.get(cid)
            c = cust["complaints"].get(complaint_id) if cust is not None else None
            if c is not None:
                out.append(complaints.state_changed(c, cid, version))
        self._complaints_touched = set()
        return out

    # -- steps --------------------------------------------------------------------------------

    def _fire_due(self, out: list[dict]) -> None:
        deadlines = self._deadlines
        clock = self.clock
        rules = self.rules
        while deadlines and deadlines[0][0] < clock:
            deadline, cid, complaint_id, rank, cycle = heapq.heappop(deadlines)
            cust = self.customers.get(cid)
            if cust is None:
                continue
            c = cust["complaints"].get(complaint_id)
            if c is None:
                continue
            breach = complaints.fire(c, SLAS[rank], deadline, cycle, cid, rules)
            if breach is None:
                continue
            out.append(breach)
            self._dirty.add(cid)
            self._complaints_touched.add((cid, complaint_id))
            churn.observe(cust["churn"], breach, rules.churn)
            risk = churn.evaluate(cust["churn"], deadline, cust["tier"]["tier"], customer_id=cid,
                                  channel=breach["channel"], city=breach["city"],
                                  source_id=breach["event_id"], rules=rules)
            if risk is not None:
                out.append(risk)
        fb_deadlines = self._feedback_deadlines
        while fb_deadlines and fb_deadlines[0][0] < clock:
            deadline, cid, feedback_id, rank = heapq.heappop(fb_deadlines)
            cust = self.customers.get(cid)
            item = cust.get("feedback", {}).get(feedback_id) if cust is not None else None
            if item is None:
                continue
            breach = feedback.fire(item, feedback_id, feedback.SLAS[rank], deadline, cid, rules)
            if breach is not None:
                out.append(breach)
                self._dirty.add(cid)

    def _customer(self, cid: str) -> dict:
        cust = self.customers.get(cid)
        if cust is None:
            cust = self.customers[cid] = _new_customer()
        return cust

    def _churn(self, cust: dict, event: Mapping, at: int, out: list[dict]) -> None:
        """Churn last, at the event's time; skipped while the level cannot change."""
        ch = cust["churn"]
        if ch["stale"] or at >= ch["next_check"]:
            cid = event["customer_id"]
            self._dirty.add(cid)
            risk = churn.evaluate(ch, at, cust["tier"]["tier"], customer_id=cid,
                                  channel=event["channel"], city=event["city"],
                                  source_id=event["event_id"], rules=self.rules)
            if risk is not None:
                out.append(risk)

    def _contact(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self.customers.get(cid)
        if event["intent"] in _CHURN_INTENTS or event["transfers"] >= self._bounced_min:
            if cust is None:
                cust = self._customer(cid)
            if churn.observe(cust["churn"], event, self.rules.churn):
                self._dirty.add(cid)
        if cust is None:
            self.windows.add_contact(event, "standard")
            return
        ch = cust["churn"]
        if ch["stale"] or at >= ch["next_check"]:  # inlined fast path of _churn
            self._churn(cust, event, at, out)
        self.windows.add_contact(event, cust["tier"]["tier"])

    def _survey(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self.customers.get(cid)
        scored = satisfaction.score_survey(event, cust["tier"]["tier"] if cust else "standard",
                                           self.rules)
        out.append(scored)
        comp = scored["composite"]
        nps = scored["nps"]
        if ((comp is not None and comp < self._low_satisfaction)
                or (nps is not None and nps <= self._detractor)):
            if cust is None:
                cust = self._customer(cid)
            if churn.observe(cust["churn"], scored, self.rules.churn):
                self._dirty.add(cid)
        if cust is not None:
            ch = cust["churn"]
            if ch["stale"] or at >= ch["next_check"]:  # inlined fast path of _churn
                self._churn(cust, event, at, out)
        self.windows.add_scored(scored)

    def _complaint(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self._customer(cid)
        self._dirty.add(cid)
        rules = self.rules
        etype = event["event_type"]
        complaint_id = event["complaint_id"]
        self._complaints_touched.add((cid, complaint_id))
        known = cust["complaints"].get(complaint_id)
        first_filing = etype == "complaint.filed" and (known is None or known["filed_at"] is None)
        armed = complaints.apply(cust["complaints"], event, rules.complaints)
        for deadline, cmp_id, sla, cycle in armed:
            heapq.heappush(self._deadlines, (deadline, cid, cmp_id, SLA_RANK[sla], cycle))
        if etype == "complaint.closed":
            for gone in complaints.prune(cust["complaints"], at, rules.complaints):
                key = (cid, gone["complaint_id"])
                if key in self._complaints_touched:  # not drained yet: keep its last state
                    self._complaints_touched.discard(key)
                    self._pruned_undrained.append(
                        complaints.state_changed(gone, cid, rules.version))
        if etype != "complaint.filed" or first_filing:
            churn.observe(cust["churn"], event, rules.churn)
        self._churn(cust, event, at, out)
        if first_filing:
            self.windows.add_complaint(event, cust["tier"]["tier"])
        if armed and self._deadlines[0][0] < self.clock:
            self._fire_due(out)

    def _feedback(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self._customer(cid)
        self._dirty.add(cid)
        items = cust.setdefault("feedback", {})
        for deadline, feedback_id, sla in feedback.apply(items, event, self.rules.feedback):
            heapq.heappush(self._feedback_deadlines,
                           (deadline, cid, feedback_id, feedback.SLA_RANK[sla]))
        if self._feedback_deadlines and self._feedback_deadlines[0][0] < self.clock:
            self._fire_due(out)  # a receipt stamped so late that its deadlines already passed

    def _hall_survey(self, event: Mapping, at: int, out: list[dict]) -> None:
        self.halls.add_reply(event)

    def _nothing(self, event: Mapping, at: int, out: list[dict]) -> None:
        """Hall visits and operational events: the clock moved; nothing else to fold."""

    def _billing(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self._customer(cid)
        self._dirty.add(cid)
        rules = self.rules
        ts = cust["tier"]
        tiers.record_period(ts, event, rules)
        ch = cust["churn"]
        churn.set_spend_drop(ch, churn.spend_drop_active(ts["periods"], rules.churn))

        def high_churn_risk() -> bool:
            # The high-risk guard sees this period's spend_drop too.
            return churn.peek_level(ch, at, ts["tier"], rules.churn) == "high"

        derived = tiers.reassess(ts, event, rules, high_churn_risk=high_churn_risk)
        self._tier_events(cust, derived, out)
        self._churn(cust, event, at, out)

    def _decision(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self._customer(cid)
        self._dirty.add(cid)
        self._tier_events(cust, tiers.on_decision(cust["tier"], event, self.rules), out)
        self._churn(cust, event, at, out)

    def _tier_events(self, cust: dict, derived: list[dict], out: list[dict]) -> None:
        if derived:
            out.extend(derived)
            if any(d["event_type"] == tiers.CHANGED for d in derived):
                cust["churn"]["stale"] = True  # the tier multiplier changed

    def _signal_only(self, event: Mapping, at: int, out: list[dict]) -> None:
        cid = event["customer_id"]
        cust = self.customers.get(cid)
        if cust is None:
            if event["event_type"] == "plan.changed" and event.get("direction") != "downgrade":
                return
            cust = self._customer(cid)
        if churn.observe(cust["churn"], event, self.rules.churn):
            self._dirty.add(cid)
        self._churn(cust, event, at, out)

    # -- state ----------------------------------------------------------------------------------

    def customer_state(self, customer_id: str) -> dict | None:
        """A customer's state as plain data (Decimals as str), or None if unknown."""
        cust = self.customers.get(customer_id)
        if cust is None:
            return None
        plain = {
            "format": STATE_FORMAT,
            "complaints": _copy(cust["complaints"]),
            "tier": tiers.to_plain(cust["tier"]),
            "churn": churn.to_plain(cust["churn"]),
        }
        if cust.get("feedback"):
            plain["feedback"] = _copy(cust["feedback"])
        return plain

    def load_customer(self, customer_id: str, plain: Mapping) -> None:
        """Restore a customer from :meth:`customer_state` output and schedule its deadlines.
        Ids the state remembered itself (stored before ``folded``) join ``folded``."""
        if plain.get("format") != STATE_FORMAT:
            raise ValueError(f"customer state format {plain.get('format')!r} is not "
                             f"{STATE_FORMAT} (customer {customer_id})")
        cust = {"complaints": _copy(plain["complaints"]), "tier": tiers.from_plain(plain["tier"]),
                "churn": churn.from_plain(plain["churn"])}
        for key in legacy_keys(plain):
            if key not in self.folded:
                self.folded.add(key)
        if plain.get("feedback"):
            cust["feedback"] = _copy(plain["feedback"])
            for deadline, feedback_id, sla in feedback.pending_deadlines(cust["feedback"]):
                heapq.heappush(self._feedback_deadlines,
                               (deadline, customer_id, feedback_id, feedback.SLA_RANK[sla]))
        self.customers[customer_id] = cust
        for deadline, complaint_id, sla, cycle in complaints.pending_deadlines(cust["complaints"]):
            heapq.heappush(self._deadlines,
                           (deadline, customer_id, complaint_id, SLA_RANK[sla], cycle))

    def window_changes(self) -> tuple[list[tuple[tuple, list]], list[tuple], list[tuple]]:
        """For a changelog that keeps the window rows of one bucket (window, window_start, city)
        in one record: (bucket, its open rows) of the buckets changed since the last call, the
        buckets to delete, and the keys of one-row records (the older layout) to delete.

        A bucket is deleted one call after its last row was forgotten (closed for good), that
        is after a partition record whose clock had closed it has been written: a batch cut
        short can then never lose a row that the last complete partition record still needs.
        Rows read back from one-row records are first written as buckets (all of them, in the
        first call), and their old records deleted in the call after, for the same reason."""
        changed, forgotten = self.windows.take_changes()
        late, self._forget_next = self._forget_next, forgotten
        just = {bucket_of(key) for key in forgotten}
        open_buckets = self.windows.buckets
        deleted = sorted({bucket_of(key) for key in late} - just - open_buckets.keys())
        legacy, self._legacy_delete_next = self._legacy_delete_next, []
        if self.legacy_window_keys:
            self._legacy_delete_next, self.legacy_window_keys = self.legacy_window_keys, []
            written = {bucket for bucket, _ in changed}
            windows = self.windows
            changed += [(bucket, [[list(key), *windows.row_plain(row)]
                                  for key, row in rows.items()])
                        for bucket, rows in sorted(open_buckets.items()) if bucket not in written]
        return changed, deleted, legacy

    def dirty_customers(self) -> set[str]:
        """Customers whose state changed since the last :meth:`clear_dirty`."""
        return set(self._dirty)

    def clear_dirty(self) -> None:
        self._dirty = set()

    def snapshot_partition(self, window_rows: bool = True) -> dict:
        """The partition-level state as plain data: clock, window partials (without their
        rows with ``window_rows=False``: see :meth:`window_changes`), the complaints not yet
        drained, counters."""
        return {
            "format": STATE_FORMAT,
            "partition": self.partition,
            "rules_version": self.rules.version,
            "clock": self.clock,
            "position": self.position,
            "windows": self.windows.snapshot(rows=window_rows),
            "halls": self.halls.snapshot(),
            "complaints_touched": sorted([list(k) for k in self._complaints_touched]),
            "ignored": dict(self.ignored),
        }

    def restore_partition(self, plain: Mapping,
                          window_rows: Iterable[tuple[Sequence, list]] = ()) -> None:
        """From :meth:`snapshot_partition` output; ``window_rows``: (key, row) of the window
        rows kept apart from it (:meth:`window_changes`)."""
        if plain.get("format") != STATE_FORMAT:
            raise ValueError(f"partition state format {plain.get('format')!r} is not {STATE_FORMAT}")
        self.clock = max(self.clock, plain["clock"])
        self.position = plain.get("position")  # None: a state from before positions were kept
        self.windows.restore(plain["windows"], window_rows)
        self.windows.clock = self.clock
        self.halls.restore(plain.get("halls"))
        self._complaints_touched = {tuple(k) for k in plain.get("complaints_touched", ())}
        self.ignored = Counter(plain.get("ignored", {}))


def _copy(value):
    """A structural copy of plain data (dicts, lists, scalars)."""
    if value.__class__ is dict:
        return {k: _copy(v) for k, v in value.items()}
    if value.__class__ is list or value.__class__ is tuple:
        return [_copy(v) for v in value]
    return value
