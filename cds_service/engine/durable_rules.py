"""The only module that touches durable-rules.

What durable-rules 2.0.28 does not tolerate, and how this module copes:
- its C engine is not thread-safe: every call goes through one lock;
- its Host polls the engine from two background timer threads outside any lock: our Host starts none
  (no rule uses timers);
- it allows at most 1024 live sessions, and `delete_state` crashes the process (segmentation fault) on
  sessions that asserted facts no rule fully matched: so there is one session, reused, and each
  evaluation retracts every fact it asserted; if the session is ever found not empty afterwards, the
  engine is rebuilt rather than trusted;
- a fact that matches nothing raises MessageNotHandledException, and a fact asserted twice raises
  MessageObservedException: facts are de-duplicated first, and neither is an error here;
- its C JSON parser mis-reads numbers in exponent form (`1e-05`, `1e+16`, which json.dumps writes for
  floats below 1e-4 or from 1e16 up) and Infinity: the worker dies (segmentation fault) or facts are lost.
  So every number is checked on its way in (`_for_rules`): one below 1e-4 in magnitude is sent as
  ±0.0001, which compares with every rule constant exactly as the value does, since the rulebook is
  refused if it has a constant between 0 and 0.0001 (`_check_constants`); one that cannot be sent at
  all (not finite, from 1e16 up, an integer past 2**53) stops the call with EngineFailure. Facts are
  built so that this never happens (labs.plausible): it is the last line, not the way data errors are
  reported.

Whatever goes wrong inside durable-rules (an exception other than the two above, facts left in the
session after a call) fails the call closed with EngineFailure (HTTP 503): findings from a run that did
not complete could be missing a warning.

An evaluation is a pure function of its facts, and durable-rules is a fifth of a hook call's cost; an EHR
asks about the same order and record several times (order-select at each change to the draft, then
order-sign). So the findings for the last EVALUATIONS_KEPT distinct fact sets are remembered, by a digest
of the record's facts and the order's (a record may be megabytes of facts; its digest is 16 bytes).

A call with several orders asserts the record once and then each order in turn (asserted, its findings
taken, retracted), so its cost is the record plus each order, never the record once per order; the
call's deadline (deadline.py) is checked between orders.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from durable import engine as durable

from .. import deadline
from .rulebook import Rulebook, RulebookError

log = logging.getLogger(__name__)
SID = "0"
EVALUATIONS_KEPT = 1024
SMALLEST = 1e-4  # the smallest magnitude json.dumps writes without an exponent
LARGEST = 1e16  # from here up json.dumps writes an exponent
LARGEST_INTEGER = 2**53  # past it an integer is no longer exact as the engine's double
_generation = itertools.count()


class EngineFailure(Exception):
    """The rules engine could not evaluate the facts completely; no findings are given (HTTP 503)."""


@dataclass(frozen=True)
class Finding:
    """A rule variant that fired, with the facts it matched."""

    variant: str  # "<rule id>#<n>"
    bindings: dict[str, dict[str, Any]]

    @property
    def rule_id(self) -> str:
        return self.variant.split("#", 1)[0]


class _Host(durable.Host):
    """A durable Host whose every action records a finding for the evaluation under way."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        super().__init__()

    def _run(self) -> None:
        """Start no background timer threads (see the module docstring)."""

    def get_action(self, action_name: str):
        def record(c: Any) -> None:
            bound = {name: _plain(fact) for name, fact in c._m.items()}
            self.findings.append(Finding(action_name, bound))

        return record


class Engine:
    """Evaluates one order's facts against the rulebook; safe to call from many threads."""

    def __init__(self, rulebook: Rulebook, remembered: int = EVALUATIONS_KEPT) -> None:
        _check_constants(rulebook.ruleset)
        self._rulebook = rulebook
        self._lock = threading.Lock()
        self._remembered: OrderedDict[tuple[bytes, str], list[Finding]] = OrderedDict()
        self._kept = remembered
        with self._lock:
            self._build()
            self._run({}, {"warm-up": {"kind": "warm-up", "sid": SID}})

    def evaluate(self, order: dict[str, Any], record: list[dict[str, Any]]) -> list[Finding]:
        """Findings for one ordered product given the patient's record facts."""
        return self.evaluate_each([order], record)

    def evaluate_each(self, orders: list[dict[str, Any]], record: list[dict[str, Any]]) -> list[Finding]:
        """Findings for each order in turn given the same record facts, in the orders' order.

        The record is asserted before the orders: rules with `unless` patterns are decided when an
        order arrives, so everything they might be waiting for must already be there.
        """
        if not orders:  # patient-view with no therapy under way: nothing is asked
            return []
        facts = _distinct([_for_rules({**fact, "sid": SID}) for fact in record])
        digest = hashlib.blake2b("\n".join(facts).encode(), digest_size=16).digest()
        keyed = [(_canonical(anchor), anchor) for anchor in (_for_rules({**order, "sid": SID}) for order in orders)]
        with self._lock:
            known = {key: self._remembered.get((digest, key)) for key, _ in keyed}
            missing = {key: anchor for key, anchor in keyed if known[key] is None}
            if missing:
                known.update(self._run(facts, missing))
            for key, findings in known.items():
                self._remember((digest, key), findings)
        return [finding for key, _ in keyed for finding in known[key]]

    def _remember(self, key: tuple[bytes, str], findings: list[Finding]) -> None:
        self._remembered[key] = findings
        self._remembered.move_to_end(key)
        if len(self._remembered) > self._kept:
            self._remembered.popitem(last=False)

    def _build(self) -> None:
        self._name = f"cd20-{next(_generation)}"
        self._host = _Host()
        # durable-rules deletes 'run' from the definition it is given: hand it a copy
        self._host.set_rulesets({self._name: {n: dict(r) for n, r in self._rulebook.ruleset.items()}})

    def _run(self, record: dict[str, dict[str, Any]], orders: dict[str, dict[str, Any]]) -> dict[str, list[Finding]]:
        """Assert the record's facts, then each order alone (asserted, its findings taken, retracted);
        every fact is retracted afterwards, also when the deadline stops the loop over the orders. A
        session found not empty afterwards is rebuilt, and the call fails (EngineFailure)."""
        found: dict[str, list[Finding]] = {}
        facts = list(record.values())
        try:
            self._call(self._host.assert_facts, facts)
            for key, anchor in orders.items():
                deadline.check()
                self._host.findings = []
                self._call(self._host.assert_facts, [anchor])
                found[key], self._host.findings = self._host.findings, []
                if key not in record:  # an order identical to a record fact stays until the record goes
                    self._call(self._host.retract_facts, [anchor])
            return found
        finally:
            self._host.findings = []
            self._call(self._host.retract_facts, facts[::-1])
            if self._host.get_facts(self._name, SID):
                log.error("rules engine session not empty after an evaluation; rebuilding the engine")
                self._build()
                raise EngineFailure("the rules engine was left in an unknown state")

    def _call(self, method: Any, facts: Any) -> None:
        if not facts:
            return
        try:
            method(self._name, facts)
        except (durable.MessageNotHandledException, durable.MessageObservedException):
            pass
        except Exception as e:  # durable-rules reports its engine's errors as bare Exceptions
            log.error("rules engine call failed", extra={"fields": {"error": type(e).__name__}})
            raise EngineFailure("the rules engine failed on this call's facts") from e


def _distinct(facts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each fact once, by its canonical JSON, in order: durable-rules keeps one copy of identical facts,
    so asserting each once keeps retraction exact."""
    unique: dict[str, dict[str, Any]] = {}
    for fact in facts:
        unique.setdefault(_canonical(fact), fact)
    return unique


def _for_rules(value: Any) -> Any:
    """The value with every number in a form durable-rules reads correctly (module docstring)."""
    if isinstance(value, dict):
        return {k: _for_rules(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_rules(v) for v in value]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, int):
        if abs(value) >= LARGEST_INTEGER:
            raise EngineFailure("a fact holds an integer the rules engine cannot compare exactly")
        return value
    if not math.isfinite(value) or abs(value) >= LARGEST:
        raise EngineFailure("a fact holds a number the rules engine cannot read")
    return math.copysign(SMALLEST, value) if 0 < abs(value) < SMALLEST else value


def _check_constants(definition: Any) -> None:
    """Refuse a ruleset with a number durable-rules would mis-read, or one between 0 and SMALLEST: a
    small value sent as ±SMALLEST must compare with every constant as itself."""
    if isinstance(definition, dict):
        for value in definition.values():
            _check_constants(value)
    elif isinstance(definition, list):
        for value in definition:
            _check_constants(value)
    elif isinstance(definition, (int, float)) and not isinstance(definition, bool):
        if not (definition == 0 or SMALLEST < abs(definition) < LARGEST_INTEGER):
            raise RulebookError(f"a rule compares with {definition!r}: the rules engine takes 0 or numbers "
                                f"from {SMALLEST:f} (exclusive) to 2**53")


def _canonical(fact: dict[str, Any]) -> str:
    return json.dumps(fact, sort_keys=True, default=str)


def _plain(fact: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(fact).items() if k not in ("sid", "id", "$s")}
