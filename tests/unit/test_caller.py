"""One canonical caller id (shop/caller.py), and the new side's ``caller_id`` applies the same rule.

Every user has exactly one accepted spelling (so a user can't pick a gray bucket by writing
``012``), Unicode digits that ``str.isdigit`` accepts are refused instead of crashing ``int()``,
and an absent or empty header is anonymous.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from handlers.http import caller_id
from shop.caller import InvalidCallerId, canonical_caller_id
from shop.errors import BadRequest

REFUSED = ["²", "¹", "١", "１", "012", "0012", "0", "00", "-1", "+1", "1.0", "1e3", "0x1", "1 2", "12a", "1_000",
           "9" * 19, "1" * 40]


@pytest.mark.parametrize("raw", REFUSED)
def test_anything_but_ascii_digits_without_sign_or_leading_zero_is_refused(raw: str) -> None:
    with pytest.raises(InvalidCallerId):
        canonical_caller_id(raw)


@pytest.mark.parametrize("raw", ["1", "12", "1001", "9" * 18, "100000000000000000"])
def test_canonical_ids_are_kept_as_they_are(raw: str) -> None:
    assert canonical_caller_id(raw) == raw


def test_an_absent_or_empty_header_is_anonymous() -> None:
    assert canonical_caller_id(None) is None
    assert canonical_caller_id("") is None


@given(st.text(max_size=24))
def test_an_accepted_id_is_the_one_spelling_of_its_number(raw: str) -> None:
    try:
        canonical = canonical_caller_id(raw)
    except InvalidCallerId:
        return
    assert canonical is None or str(int(canonical)) == canonical == raw


@pytest.mark.parametrize("raw", REFUSED)
def test_the_new_sides_caller_id_answers_400_naming_the_header_never_a_crash(raw: str) -> None:
    request = make_mocked_request("POST", "/order2/calc_price", headers={"X-User-Id": raw})
    with pytest.raises(BadRequest) as err:
        caller_id(request)
    assert err.value.data["field"] == "X-User-Id"


def test_the_new_sides_caller_id_reads_canonical_ids_and_anonymous() -> None:
    assert caller_id(make_mocked_request("GET", "/", headers={"X-User-Id": "12"})) == 12
    assert caller_id(make_mocked_request("GET", "/", headers={"X-User-Id": ""})) is None
    assert caller_id(make_mocked_request("GET", "/")) is None
