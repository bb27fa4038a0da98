"""handler/access.py: the bucket allow-list, entry by entry."""

from __future__ import annotations

import pytest

from handler.access import check_allowed, is_allowed
from handler.errors import ForbiddenObjectError
from handler.objects import ObjectRef


@pytest.mark.parametrize(
    ("bucket", "key", "allowed", "expected"),
    [
        ("scenes", "a.tif", (), True),  # no list: every bucket (local tools)
        ("scenes", "a.tif", ("scenes",), True),
        ("other", "a.tif", ("scenes",), False),
        ("scenes-2", "a.tif", ("scenes",), False),  # a bucket name is matched whole, not as a prefix
        ("scenes", "in/a.tif", ("scenes/in/",), True),
        ("scenes", "out/a.tif", ("scenes/in/",), False),
        ("scenes", "inbox/a.tif", ("scenes/in/",), False),
        ("shared", "u/a.tif", ("scenes", "shared/u/"), True),
    ],
)
def test_is_allowed(bucket, key, allowed, expected):
    assert is_allowed(ObjectRef(bucket, key), allowed) is expected


def test_the_raw_key_tried_on_a_404_must_lie_under_the_prefix_too():
    ref = ObjectRef("scenes", "in/a b.tif", raw_key="out/../in/a+b.tif")
    assert is_allowed(ref, ("scenes/in/",)) is False


def test_one_foreign_reference_refuses_the_whole_event_with_a_short_message():
    refs = [ObjectRef("scenes", "a.tif"), ObjectRef("victim", "x" * 5000 + ".tif")]
    with pytest.raises(ForbiddenObjectError, match="outside ALLOWED_BUCKETS") as info:
        check_allowed(refs, ("scenes",))
    assert "s3://victim/" in str(info.value) and len(str(info.value)) < 300
