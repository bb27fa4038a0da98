"""Decide, from an object reference alone, whether the function should process it.

The function writes its outputs into the bucket it reads from, so a notification for ``*.npy`` would start it
again on its own output: those suffixes are refused here whatever ``INPUT_SUFFIXES`` says, so no configuration
can make a recursion loop.

Example:
    >>> skip_reason(ObjectRef("b", "scenes/a.TIF", event_name="ObjectCreated:Put")) is None
    True
    >>> skip_reason(ObjectRef("b", "scenes/a.npy", event_name="ObjectCreated:Put"))
    "the function's own output (.npy)"
"""

from __future__ import annotations

from collections.abc import Iterable

from handler.events import is_created_event
from handler.objects import JOB_PREFIX, OWN_OUTPUT_SUFFIXES, ObjectRef, normalise_suffixes
from handler.settings import DEFAULT_INPUT_SUFFIXES


def skip_reason(ref: ObjectRef, suffixes: Iterable[str] = DEFAULT_INPUT_SUFFIXES) -> str | None:
    """``None`` to process ``ref``; otherwise a short reason to skip it (logged, never an error).

    ``suffixes`` (``settings.input_suffixes``) are compared case-insensitively, with or without their dot.
    """
    if not is_created_event(ref.event_name):
        return f"not an object-created event ({ref.event_name})"
    key = ref.key.lower()
    if key.endswith("/"):
        return "a directory placeholder (key ends in '/')"
    if key.startswith(JOB_PREFIX) or f"/{JOB_PREFIX}" in key:
        return f"a fan-out job object (under {JOB_PREFIX})"
    own = next((suffix for suffix in OWN_OUTPUT_SUFFIXES if key.endswith(suffix)), None)
    if own is not None:
        return f"the function's own output ({own})"
    wanted = normalise_suffixes(suffixes)
    if not key.endswith(wanted):
        return f"key does not end in {' or '.join(wanted) or 'a configured suffix'}"
    return None
