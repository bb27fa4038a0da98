"""handler/http/auth.py: which Authorization headers pass a configured bearer token."""

from __future__ import annotations

import pytest

from handler.http.auth import bearer_refusal


@pytest.mark.parametrize(
    ("header", "token", "refused"),
    [
        ("Bearer s3cr3t", "s3cr3t", None),
        ("bearer  s3cr3t ", "s3cr3t", None),  # the scheme in any case, spaces around the token
        ("", None, None),  # no token configured: the route is open
        ("", "s3cr3t", "missing Authorization header (T)"),
        ("Bearer wrong", "s3cr3t", "wrong bearer token (T)"),
        ("Basic s3cr3t", "s3cr3t", "wrong bearer token (T)"),
    ],
)
def test_bearer_refusal(header, token, refused):
    assert bearer_refusal(header, token, "T") == refused
