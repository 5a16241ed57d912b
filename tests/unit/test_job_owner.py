"""Who owns a background job: the browser, from Streamlit's XSRF cookie, so a reload keeps it (issue 17)."""

from __future__ import annotations

import os

from ui.jobs import browser_token


def xsrf_cookie(token: bytes, mask: bytes | None = None) -> str:
    """A cookie as Streamlit writes it: ``2|mask|token xor mask|time`` (a fresh mask per page load)."""
    mask = mask or os.urandom(4)
    masked = bytes(b ^ mask[i % len(mask)] for i, b in enumerate(token))
    return f"2|{mask.hex()}|{masked.hex()}|1796241720"


def test_the_same_browser_is_one_owner_whatever_the_mask():
    token = os.urandom(16)
    owners = {browser_token(xsrf_cookie(token, bytes([m, 1, 2, 3]))) for m in range(5)}
    assert len(owners) == 1 and next(iter(owners)).startswith("browser:")
    assert browser_token(xsrf_cookie(os.urandom(16))) not in owners  # another browser, another owner


def test_the_owner_does_not_reveal_the_token():
    token = bytes(range(16))
    owner = browser_token(xsrf_cookie(token))
    assert token.hex() not in owner and len(owner) == len("browser:") + 32


def test_no_or_malformed_cookie_gives_no_browser_owner():
    for cookie in (None, "", "abc", "1|00|11|2", "2|zz|1234|1", "2||00112233445566778899aabbccddeeff|1",
                   "2|01020304|0011|1"):
        assert browser_token(cookie) is None, cookie
