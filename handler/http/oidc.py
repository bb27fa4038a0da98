"""Knative Eventing's sender identity: the OIDC token a Trigger's delivery carries, verified by the relay.

With Eventing's ``authentication-oidc`` feature on, the Broker's filter sends each delivery with
``Authorization: Bearer <JWT>``: a token of the Trigger's own service account (``<trigger>oidc-eventing.
knative.dev-trigger``), for the subscriber's audience (the Trigger's ``subscriber.audience``), issued and signed
by the cluster's service-account issuer. :class:`SenderVerifier` accepts a delivery only when the token's
signature verifies against the issuer's JWKS and its ``iss``, ``aud``, ``exp`` and ``sub`` (one of the
configured Triggers) all match: any pod can mint a token for any audience, but not for another's service
account.

The JWKS comes from a URL (the API server's ``/openid/v1/jwks``, read with the pod's projected token) or a
mounted file; it is fetched at the first delivery and again when a token names a key it does not hold (the
issuer rotated its keys), at most every :data:`REFETCH_AFTER_S`.

Example:
    >>> verifier = SenderVerifier(OidcPolicy("https://kubernetes.default.svc", "rasterfn-relay", ("sub",)),
    ...                           FileJwks("/var/run/jwks.json"))              # doctest: +SKIP
    >>> claims = await verifier.verify(request.headers.get("authorization"))    # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt

logger = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")  # what a Kubernetes service-account issuer signs with; never HS* or none
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub")
LEEWAY_S = 30  # clock skew between the API server and this pod
REFETCH_AFTER_S = 60
FETCH_TIMEOUT_S = 10.0


class SenderIdentityError(Exception):
    """A delivery without a valid sender-identity token: refused (401), the function sees nothing."""


class JwksUnavailableError(Exception):
    """The issuer's keys could not be read: not the sender's fault (503, the Broker retries)."""


@dataclass(frozen=True)
class OidcPolicy:
    """Whose tokens a delivery may carry: the cluster's issuer, our audience, the Triggers' service accounts."""

    issuer: str
    audience: str
    subjects: tuple[str, ...]  # e.g. system:serviceaccount:default:rasterfn-uploadsoidc-eventing.knative.dev-trigger


class JwksSource(Protocol):
    async def load(self) -> bytes: ...


@dataclass(frozen=True)
class FileJwks:
    """A JWKS mounted as a file (a ConfigMap holding ``kubectl get --raw /openid/v1/jwks``)."""

    path: Path

    async def load(self) -> bytes:
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise JwksUnavailableError(f"JWKS file {self.path}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class HttpJwks:
    """A JWKS fetched over HTTP(S), with a bearer token read from ``token_file`` at each fetch (it rotates)."""

    url: str
    client: httpx.AsyncClient
    token_file: Path | None = None

    async def load(self) -> bytes:
        headers = {}
        if self.token_file is not None:
            try:
                headers["authorization"] = "Bearer " + Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise JwksUnavailableError(f"token file {self.token_file}: {exc.strerror or exc}") from exc
        try:
            answer = await self.client.get(self.url, headers=headers, timeout=FETCH_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise JwksUnavailableError(f"JWKS {self.url}: {exc}") from exc
        if not answer.is_success:
            raise JwksUnavailableError(f"JWKS {self.url}: HTTP {answer.status_code}")
        return answer.content


class SenderVerifier:
    """Verifies a delivery's ``Authorization`` header against :class:`OidcPolicy` and the issuer's keys."""

    def __init__(self, policy: OidcPolicy, jwks: JwksSource, clock=time.monotonic) -> None:
        self.policy = policy
        self.jwks = jwks
        self.clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None

    async def verify(self, authorization: str | None) -> dict[str, Any]:
        """The token's claims, or :class:`SenderIdentityError` (or :class:`JwksUnavailableError`)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise SenderIdentityError("no bearer token (Knative Eventing's sender identity, authentication-oidc)")
        token = token.strip()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise SenderIdentityError(f"not a JWT ({exc})") from None
        key = await self._key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=self.policy.audience,
                issuer=self.policy.issuer,
                leeway=LEEWAY_S,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.PyJWTError as exc:
            raise SenderIdentityError(f"token refused: {exc}") from None
        if claims["sub"] not in self.policy.subjects:
            raise SenderIdentityError(f"token of {str(claims['sub'])[:200]!r}, not of a Trigger of ours")
        return claims

    async def _key(self, kid: Any) -> Any:
        if not isinstance(kid, str) or not kid:
            raise SenderIdentityError("the token names no signing key (kid)")
        if kid not in self._keys and self._may_fetch():
            self._keys = await self._fetch()
        if kid not in self._keys:
            raise SenderIdentityError(f"the token's signing key {kid[:64]!r} is not the issuer's")
        return self._keys[kid]

    def _may_fetch(self) -> bool:
        return self._fetched_at is None or self.clock() - self._fetched_at >= REFETCH_AFTER_S

    async def _fetch(self) -> dict[str, Any]:
        self._fetched_at = self.clock()
        raw = await self.jwks.load()
        try:
            keys = jwt.PyJWKSet.from_dict(json.loads(raw)).keys
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            raise JwksUnavailableError(f"the issuer's JWKS is not a key set ({exc})") from None
        logger.info("OIDC: %d signing key(s) of %s", len(keys), self.policy.issuer)
        return {key.key_id: key for key in keys if key.key_id}
