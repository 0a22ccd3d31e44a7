"""adapters/adyen_hmac.py signs a NotificationRequestItem exactly as Adyen does and refuses anything else.

The vectors are Adyen's own, published in Adyen's official Python library
(github.com/Adyen/adyen-python-api-library): ``test/UtilTest.py``
``test_notification_request_item_hmac`` (commit b9be2c9642d2160175be901a4021ed1e73eb5f3c) and
the notifications with a ``:`` and backslashes in merchantReference, ``test/mocks/util/
colon_notification.json`` (commit 5e79e152bdb8c25499705a32fe2cb1054bc842b9) and
``backslash_notification.json`` (commit 42efeba61e4b6d7ef44b4000ae37bb88725d6893), signed there with
the keys below and checked by that library's ``is_valid_hmac_notification``.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from adapters.adyen_hmac import AdyenHmac, InvalidNotification, signing_string, verified_items

# UtilTest.py: key and expected signature of the AUTHORISATION item below.
PUBLISHED_KEY = "44782DEF547AAA06C910C43932B1EB0C71FC68D9D0C057550C48EC2ACF6BA056"
PUBLISHED_SIGNATURE = "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="
PUBLISHED_ITEM: dict[str, Any] = {
    "pspReference": "7914073381342284",
    "merchantReference": "TestPayment-1407325143704",
    "merchantAccountCode": "TestMerchant",
    "amount": {"currency": "EUR", "value": 1130},
    "eventCode": "AUTHORISATION",
    "success": "true",
    "eventDate": "2019-05-06T17:15:34.121+02:00",
    "operations": ["CANCEL", "CAPTURE", "REFUND"],
    "paymentMethod": "visa",
}
# colon_notification.json / backslash_notification.json (fields that are not signed left out).
SLASHES_KEY = "74F490DD33F7327BAECC88B2947C011FC02D014A473AAA33A8EC93E4DC069174"
COLON_ITEM: dict[str, Any] = {
    "additionalData": {"hmacSignature": "2EQYm7YJpKO4EtHSPu55SQTyWf8dkW5u2nD1tJFpViA="},
    "amount": {"currency": "EUR", "value": 1000},
    "eventCode": "AUTHORISATION",
    "merchantAccountCode": "AntoniStroinski",
    "merchantReference": ":slashes are fun",
    "pspReference": "M8NB66SBZSGLNK82",
    "success": "true",
}
BACKSLASH_ITEM: dict[str, Any] = {
    "additionalData": {"hmacSignature": "nIgT81gaB5oJpn2jPXupDq68iRo2wUlBsuYjtYfwKqo="},
    "amount": {"currency": "EUR", "value": 1000},
    "eventCode": "AUTHORISATION",
    "merchantAccountCode": "AntoniStroinski",
    "merchantReference": "\\\\slashes are fun",
    "pspReference": "T7FD4VM4D3RZNN82",
    "success": "true",
}


def signed(item: dict[str, Any], signature: str) -> dict[str, Any]:
    return {**copy.deepcopy(item), "additionalData": {"hmacSignature": signature}}


def test_the_signing_string_is_adyens_eight_fields_with_an_empty_original_reference() -> None:
    assert signing_string(PUBLISHED_ITEM) == (
        "7914073381342284::TestMerchant:TestPayment-1407325143704:1130:EUR:AUTHORISATION:true"
    )


def test_the_published_vector_signs_and_verifies() -> None:
    key = AdyenHmac.from_hex(PUBLISHED_KEY)
    assert key.sign(PUBLISHED_ITEM) == PUBLISHED_SIGNATURE
    assert key.verify(signed(PUBLISHED_ITEM, PUBLISHED_SIGNATURE))


@pytest.mark.parametrize("item", [COLON_ITEM, BACKSLASH_ITEM], ids=["colon", "backslashes"])
def test_references_with_colons_and_backslashes_are_signed_as_they_are(item: dict[str, Any]) -> None:
    assert AdyenHmac.from_hex(SLASHES_KEY).verify(item)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda i: i["amount"].update(value=11300),
        lambda i: i["amount"].update(currency="USD"),
        lambda i: i.update(success="false"),
        lambda i: i.update(eventCode="REFUND"),
        lambda i: i.update(merchantReference="TestPayment-1407325143705"),
        lambda i: i.update(pspReference="7914073381342285"),
        lambda i: i.update(originalReference="7914073381342284"),
        lambda i: i.update(merchantAccountCode="OtherMerchant"),
    ],
    ids=["value", "currency", "success", "eventCode", "merchantReference", "pspReference", "originalReference",
         "merchantAccountCode"],
)
def test_a_tampered_signed_field_fails(tamper: Any) -> None:
    item = signed(PUBLISHED_ITEM, PUBLISHED_SIGNATURE)
    tamper(item)
    assert not AdyenHmac.from_hex(PUBLISHED_KEY).verify(item)


def test_fields_outside_the_signing_string_do_not_matter() -> None:
    item = signed(PUBLISHED_ITEM, PUBLISHED_SIGNATURE)
    item["reason"] = "anything"
    item["eventDate"] = "2030-01-01T00:00:00+00:00"
    assert AdyenHmac.from_hex(PUBLISHED_KEY).verify(item)


def test_another_key_fails() -> None:
    assert not AdyenHmac.from_hex("00" * 32).verify(signed(PUBLISHED_ITEM, PUBLISHED_SIGNATURE))


@pytest.mark.parametrize(
    "extra",
    [None, {}, {"hmacSignature": ""}, {"hmacSignature": None}, {"hmacSignature": 42}, "not-a-dict",
     {"hmacSignature": "coqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0"},  # one character short
     {"hmacSignature": "ｃoqCmt/IZ4E3CzPvMY8zTjQVL5hYJUiBRg8UU+iCWo0="}],  # not ASCII: still False, no exception
    ids=["absent", "empty-additional-data", "empty", "null", "number", "not-object", "truncated", "non-ascii"],
)
def test_a_missing_or_malformed_signature_fails_without_raising(extra: Any) -> None:
    item = copy.deepcopy(PUBLISHED_ITEM)
    if extra is not None:
        item["additionalData"] = extra
    assert not AdyenHmac.from_hex(PUBLISHED_KEY).verify(item)


def test_a_notification_is_refused_whole_when_one_item_is_bad() -> None:
    key = AdyenHmac.from_hex(PUBLISHED_KEY)
    good = {"NotificationRequestItem": signed(PUBLISHED_ITEM, PUBLISHED_SIGNATURE)}
    bad = {"NotificationRequestItem": copy.deepcopy(PUBLISHED_ITEM)}  # no signature
    assert verified_items({"live": "false", "notificationItems": [good]}, key) == [good["NotificationRequestItem"]]
    with pytest.raises(InvalidNotification, match=r"notificationItems\[1\]"):
        verified_items({"live": "false", "notificationItems": [good, bad]}, key)


@pytest.mark.parametrize("body", [None, [], {}, {"notificationItems": []}, {"notificationItems": [{"x": 1}]},
                                  {"notificationItems": "nope"}])
def test_a_body_that_is_not_a_notification_is_refused(body: Any) -> None:
    with pytest.raises(InvalidNotification):
        verified_items(body, AdyenHmac.from_hex(PUBLISHED_KEY))


def test_the_key_is_hex_and_never_shown() -> None:
    key = AdyenHmac.from_hex(PUBLISHED_KEY)
    assert PUBLISHED_KEY not in repr(key) and PUBLISHED_KEY.lower() not in repr(key)
    assert bytes.fromhex(PUBLISHED_KEY).hex() not in repr(key)
    with pytest.raises(ValueError) as err:
        AdyenHmac.from_hex("not hex " + PUBLISHED_KEY)
    assert PUBLISHED_KEY not in str(err.value)
