"""Bearer tokens on the Knative routes: whether a request's ``Authorization`` header carries the token."""

from __future__ import annotations

import hmac

BEARER_CHALLENGE = 'Bearer realm="rasterfn"'


def bearer_refusal(authorization: str, token: str | None, name: str) -> str | None:
    """Why a request with this ``Authorization`` header is refused, or None when it may pass (pure).

    No ``token`` configured lets every request pass; the comparison takes the same time wherever it differs.

    >>> bearer_refusal("Bearer s3cr3t", "s3cr3t", "WEBHOOK_TOKEN") is None
    True
    >>> bearer_refusal("", "s3cr3t", "WEBHOOK_TOKEN")
    'missing Authorization header (WEBHOOK_TOKEN)'
    """
    if not token:
        return None
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode()):
        return None
    return f"missing Authorization header ({name})" if not scheme else f"wrong bearer token ({name})"
