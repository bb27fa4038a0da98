"""Which buckets (and key prefixes) the function may touch: checked before any S3 call, on every path.

``ALLOWED_BUCKETS`` lists ``bucket`` or ``bucket/prefix/`` entries. An event naming anything else is refused
with :class:`~handler.errors.ForbiddenObjectError` before the function sends S3 a single request, so whoever
can send an event cannot make it read, or write ``<stem>.npy`` into, a bucket its credentials happen to reach.
An empty list allows every bucket (local tools; deployments set it: Terraform to the input bucket).

Example:
    >>> is_allowed(ObjectRef("scenes", "in/a.tif"), ("scenes/in/",))
    True
    >>> is_allowed(ObjectRef("other", "a.tif"), ("scenes",))
    False
"""

from __future__ import annotations

from collections.abc import Sequence

from handler.errors import ForbiddenObjectError
from handler.objects import ObjectRef, s3_uri


def is_allowed(ref: ObjectRef, allowed: Sequence[str]) -> bool:
    """Whether ``ref`` lies in one of the ``allowed`` entries (pure; an empty list allows everything)."""
    if not allowed:
        return True
    for rule in allowed:
        bucket, _, prefix = rule.partition("/")
        if ref.bucket == bucket and ref.key.startswith(prefix) and _raw_key_allowed(ref, prefix):
            return True
    return False


def allowed_bucket_names(allowed: Sequence[str]) -> frozenset[str]:
    """The buckets the ``allowed`` entries name, whatever their prefixes (pure).

    >>> sorted(allowed_bucket_names(("scenes/in/", "other")))
    ['other', 'scenes']
    """
    return frozenset(rule.partition("/")[0] for rule in allowed)


def check_allowed(refs: Sequence[ObjectRef], allowed: Sequence[str]) -> None:
    """Refuse the whole event when any reference lies outside ``allowed`` (nothing of it is processed)."""
    for ref in refs:
        if not is_allowed(ref, allowed):
            raise ForbiddenObjectError(f"{s3_uri(ref.bucket, ref.key[:200])} is outside ALLOWED_BUCKETS")


def _raw_key_allowed(ref: ObjectRef, prefix: str) -> bool:
    # storage.locate falls back to the raw key: it must lie under the prefix too.
    return ref.raw_key is None or ref.raw_key.startswith(prefix)
