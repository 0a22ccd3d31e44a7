"""Adyen standard-notification HMAC: sign and verify one ``NotificationRequestItem``.

Adyen's rule (docs.adyen.com "Verify HMAC signatures", and ``generate_notification_sig`` of
Adyen's Python library): join

    pspReference:originalReference:merchantAccountCode:merchantReference:value:currency:eventCode:success

(a missing field is the empty string; ``value`` is the minor-units integer as decimal digits,
``success`` the string "true"/"false" as received), HMAC-SHA256 it with the key given as hex in
the Customer Area, base64 the digest, and compare with ``additionalData.hmacSignature``. The
fields are joined as they are, unescaped: a ``:`` inside a merchantReference is signed as it is.

``AdyenHmac.verify`` is constant-time (``hmac.compare_digest``) and answers False, never raises,
for a missing, malformed or wrong signature; ``verified_items`` checks a whole notification
(every item, before anything is stored) and raises ``InvalidNotification`` naming the first bad
item by index only. The key never appears in a repr or a message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

FIELDS = ("pspReference", "originalReference", "merchantAccountCode", "merchantReference")


class InvalidNotification(ValueError):
    """A notification that is not Adyen's shape or has an item whose signature does not verify."""


def signing_string(item: Mapping[str, Any]) -> str:
    found = item.get("amount")
    amount: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    parts = [_text(item.get(name)) for name in FIELDS]
    parts += [_text(amount.get("value")), _text(amount.get("currency")), _text(item.get("eventCode")),
              _text(item.get("success"))]
    return ":".join(parts)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


class AdyenHmac:
    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("an HMAC key is not empty")
        self._key = key

    @classmethod
    def from_hex(cls, hex_key: str) -> AdyenHmac:
        try:
            return cls(bytes.fromhex(hex_key))
        except (TypeError, ValueError):
            raise ValueError("the Adyen HMAC key is not hex") from None

    def __repr__(self) -> str:
        return "AdyenHmac(key=<hidden>)"

    def sign(self, item: Mapping[str, Any]) -> str:
        digest = hmac.new(self._key, signing_string(item).encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def verify(self, item: Mapping[str, Any]) -> bool:
        extra = item.get("additionalData")
        given = extra.get("hmacSignature") if isinstance(extra, Mapping) else None
        if not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(self.sign(item).encode("ascii"), given.encode("utf-8", "replace"))


def notification_items(body: Any) -> list[Mapping[str, Any]]:
    """The ``NotificationRequestItem``s of a standard notification body, or ``InvalidNotification``."""
    entries = body.get("notificationItems") if isinstance(body, Mapping) else None
    if not isinstance(entries, list) or not entries:
        raise InvalidNotification("no notificationItems")
    items = []
    for n, entry in enumerate(entries):
        item = entry.get("NotificationRequestItem") if isinstance(entry, Mapping) else None
        if not isinstance(item, Mapping):
            raise InvalidNotification(f"notificationItems[{n}] is not a NotificationRequestItem")
        items.append(item)
    return items


def verified_items(body: Any, key: AdyenHmac) -> list[Mapping[str, Any]]:
    """Every item of `body`, each signature checked; one bad item refuses the whole notification."""
    items = notification_items(body)
    for n, item in enumerate(items):
        if not key.verify(item):
            raise InvalidNotification(f"notificationItems[{n}]: HMAC signature missing or wrong")
    return items
