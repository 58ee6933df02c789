"""Blank query values are dropped before routing; everything else is kept byte for byte."""

from __future__ import annotations

import pytest

from server.api.middleware.blank_query import drop_blank_values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", b""),
        (b"limit=5", b"limit=5"),
        (b"limit=&offset=&model=&status=&from=&to=", b""),
        (b"limit=2&offset=&status=+&to=%20", b"limit=2"),
        (b"flag&empty=", b"flag"),  # a bare name is not a blank value
        (b"prompt=caf%C3%A9&x=", b"prompt=caf%C3%A9"),
        (b"a=%00", b"a=%00"),  # not blank: a control character is the handler's to judge
    ],
)
def test_drop_blank_values(raw: bytes, expected: bytes) -> None:
    assert drop_blank_values(raw) == expected


def test_a_query_without_blanks_is_returned_as_is() -> None:
    raw = b"limit=5&offset=10"
    assert drop_blank_values(raw) is raw
