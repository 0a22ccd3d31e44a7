"""Fault knobs of the PSP emulator (``POST /_psp/faults`` on the loopback control listener).

A **call rule** applies to the calls whose path matches its pattern (``fnmatch``: ``*`` matches
anything, slashes included, so ``/v2/checkout/orders/*/capture`` is every capture and ``*`` is
every call), in the order the rules were set; a second rule for the same pattern replaces it::

    {"path": "/v71/payments", "delay_ms": 50}                      # added latency, every call
    {"path": "/v71/payments", "error_status": 503, "times": 2}     # the next 2 calls fail, nothing done
    {"path": "/v2/checkout/orders/*/capture", "act_then_timeout": true, "times": 1}
        # the capture happens (and its idempotency key stores the answer), the answer never comes
    {"path": "/v2/checkout/orders/*/capture", "paypal_capture_status": "PENDING", "times": 1}
    {"path": "/v71/payments/*/refunds", "adyen_refund_failed": true, "times": 1}
        # the refund is received, then REFUND (success "true") and REFUND_FAILED (success "true")

``times`` (default: every call until cleared) counts the matching calls the rule takes part in;
when it reaches 0 the rule is gone. An error answer is in the PSP's own error shape and comes
before anything happens. **Webhook knobs**: ``{"webhooks": {"copies": 3, "out_of_order": true}}``:
every notification is delivered `copies` times; while `out_of_order` is on, notifications are
held and ``POST /_psp/webhooks/flush`` (or turning it off) delivers them newest first.
``GET`` lists, ``DELETE`` clears everything (``?path=PATTERN`` one rule).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, replace
from typing import Any

MAX_DELAY_MS = 600_000
_RULE_FIELDS = {"path", "delay_ms", "error_status", "act_then_timeout", "paypal_capture_status",
                "adyen_refund_failed", "times"}
_WEBHOOK_FIELDS = {"copies", "out_of_order"}
CAPTURE_STATUSES = ("COMPLETED", "PENDING", "DECLINED")


class FaultError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class CallRule:
    path: str
    delay_ms: int = 0
    error_status: int | None = None
    act_then_timeout: bool = False
    paypal_capture_status: str | None = None
    adyen_refund_failed: bool = False
    times: int | None = None

    def matches(self, path: str) -> bool:
        return fnmatch.fnmatchcase(path, self.path)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> CallRule:
        unknown = sorted(set(body) - _RULE_FIELDS)
        if unknown:
            raise FaultError(unknown[0], "unknown field")
        path = body.get("path")
        if not isinstance(path, str) or not (path.startswith("/") or path.startswith("*")):
            raise FaultError("path", "an absolute path pattern ('*' matches anything)")
        status = body.get("paypal_capture_status")
        if status is not None and status not in CAPTURE_STATUSES:
            raise FaultError("paypal_capture_status", f"one of {', '.join(CAPTURE_STATUSES)}")
        error_status = body.get("error_status")
        if error_status is not None:
            error_status = _whole(body, "error_status", 400, 599)
        times = body.get("times")
        return cls(
            path=path,
            delay_ms=_whole(body, "delay_ms", 0, MAX_DELAY_MS) if "delay_ms" in body else 0,
            error_status=error_status,
            act_then_timeout=_flag(body, "act_then_timeout"),
            paypal_capture_status=status,
            adyen_refund_failed=_flag(body, "adyen_refund_failed"),
            times=None if times is None else _whole(body, "times", 1, 1_000_000),
        )


@dataclass(frozen=True, slots=True)
class Hits:
    """What the rules matching one call make of it."""

    delay_ms: int = 0
    error_status: int | None = None
    act_then_timeout: bool = False
    paypal_capture_status: str | None = None
    adyen_refund_failed: bool = False


NO_HITS = Hits()


def _whole(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultError(name, f"an integer in {low}..{high}")
    return value


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise FaultError(name, "true or false")
    return value


class FaultTable:
    def __init__(self) -> None:
        self._rules: dict[str, CallRule] = {}
        self.webhook_copies = 1
        self.webhook_out_of_order = False

    def set(self, rule: CallRule) -> None:
        """Rules apply in the order they were set, so a replaced rule moves to the end."""
        self._rules = {**{p: r for p, r in self._rules.items() if p != rule.path}, rule.path: rule}

    def clear(self, pattern: str | None = None) -> bool:
        """Drop the rule for `pattern`, or (None) every rule and webhook knob; False if there was no such rule."""
        if pattern is not None:
            return self._rules.pop(pattern, None) is not None
        self._rules, self.webhook_copies, self.webhook_out_of_order = {}, 1, False
        return True

    def set_webhooks(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise FaultError("webhooks", "an object")
        unknown = sorted(set(body) - _WEBHOOK_FIELDS)
        if unknown:
            raise FaultError(f"webhooks.{unknown[0]}", "unknown field")
        try:
            copies = _whole(body, "copies", 1, 10) if "copies" in body else self.webhook_copies
            out_of_order = _flag(body, "out_of_order") if "out_of_order" in body else self.webhook_out_of_order
        except FaultError as exc:
            raise FaultError(f"webhooks.{exc.field}", str(exc).partition(": ")[2]) from None
        self.webhook_copies, self.webhook_out_of_order = copies, out_of_order

    def take(self, path: str) -> Hits:
        """The effects of every rule matching a call to `path`; each counted rule gives up one of its `times`."""
        hits = NO_HITS
        for rule in [r for r in self._rules.values() if r.matches(path)]:
            hits = Hits(
                delay_ms=hits.delay_ms + rule.delay_ms,
                error_status=hits.error_status or rule.error_status,
                act_then_timeout=hits.act_then_timeout or rule.act_then_timeout,
                paypal_capture_status=hits.paypal_capture_status or rule.paypal_capture_status,
                adyen_refund_failed=hits.adyen_refund_failed or rule.adyen_refund_failed,
            )
            if rule.times is not None:
                if rule.times <= 1:
                    del self._rules[rule.path]
                else:
                    self._rules[rule.path] = replace(rule, times=rule.times - 1)
        return hits

    def to_json(self) -> dict[str, Any]:
        return {"rules": [asdict(r) for r in self._rules.values()],
                "webhooks": {"copies": self.webhook_copies, "out_of_order": self.webhook_out_of_order}}
