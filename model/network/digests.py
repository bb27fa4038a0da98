"""SHA-256 of files, streamed: how cards pin the exact bytes of weights and exported graphs.

Example:
    >>> len(sha256_file(__file__))
    64
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
