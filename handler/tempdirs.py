"""Sweep our own stale temp dirs at start-up: what a crashed or killed run left in ``TMPDIR``.

Every job works in a private ``mkdtemp`` directory (``rasterfn-XXXXXXXX`` for events, ``rasterfn-http-XXXXXXXX``
for uploads) and removes it when done; a process killed mid-job (OOM, a native crash, a Lambda timeout)
cannot. Lambda keeps ``/tmp`` across warm invocations and a Knative pod keeps its ``emptyDir``, so the
leftovers would add up until the disk is full. At start-up, before any job runs, :func:`sweep_stale_dirs`
removes directories that match exactly those names, belong to this user, are not the model cache and were
last modified more than ``STALE_TMP_MINUTES`` ago. Nothing else in ``TMPDIR`` is touched.

Example:
    >>> is_ours("rasterfn-k2j_9x0a"), is_ours("rasterfn-http-0a1b2c3d"), is_ours("rasterfn-model")
    (True, True, False)
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from handler.settings import Settings

log = logging.getLogger(__name__)

# tempfile's random names: 8 characters of [a-z0-9_].
_OURS = re.compile(r"rasterfn-(?:http-)?[a-z0-9_]{8}")


def is_ours(name: str) -> bool:
    """Whether a directory name is one of our job directories (pure)."""
    return _OURS.fullmatch(name) is not None


def sweep_stale_dirs(tmp_dir: Path, max_age_s: float, *, keep: tuple[Path, ...] = (), now: float | None = None) -> int:
    """Remove our job directories in ``tmp_dir`` older than ``max_age_s``; returns how many were removed."""
    now = time.time() if now is None else now
    kept = {path.resolve() for path in keep}
    removed = 0
    try:
        entries = list(os.scandir(tmp_dir))
    except OSError as exc:
        log.warning("cannot list %s for stale temp dirs: %s", tmp_dir, exc)
        return 0
    for entry in entries:
        if not is_ours(entry.name) or Path(entry.path).resolve() in kept:
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid():
                continue
            if now - info.st_mtime < max_age_s:
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed += 1
    if removed:
        log.warning("removed %d stale temp dir(s) from %s (left by a crashed or killed run)", removed, tmp_dir)
    return removed


def sweep_at_startup(settings: Settings) -> int:
    """:func:`sweep_stale_dirs` with the deployment's ``TMPDIR`` and ``STALE_TMP_MINUTES``, sparing the model cache."""
    return sweep_stale_dirs(settings.tmp_dir, settings.stale_tmp_minutes * 60, keep=(settings.model_cache_dir,))
