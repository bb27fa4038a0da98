"""handler.filters: which object references the function processes, and why it skips the others."""

from __future__ import annotations

import pytest

from handler.filters import skip_reason
from handler.objects import OWN_OUTPUT_SUFFIXES, ObjectRef

BUCKET = "rasterfn-demo"


def ref(key: str, event_name: str | None = "ObjectCreated:Put") -> ObjectRef:
    return ObjectRef(bucket=BUCKET, key=key, event_name=event_name, source="s3")


@pytest.mark.parametrize(
    "item",
    [
        ref("scenes/a.tif"),
        ref("scenes/a.TIF"),
        ref("scenes/a.tiff"),
        ref("scenes/a b é.tif"),
        ref("scenes/a.tif", "ObjectCreated:CompleteMultipartUpload"),
        ref("scenes/a.tif", "ObjectCreated:Copy"),
        ref("scenes/a.tif", "ObjectCreated:Post"),
        ref("scenes/a.tif", None),  # direct invoke: an explicit request
    ],
    ids=lambda r: f"{r.key}|{r.event_name}",
)
def test_uploaded_rasters_are_processed(item):
    # GIVEN an upload of a raster with a configured suffix
    # WHEN filtered with the default suffixes
    # THEN it is processed
    assert skip_reason(item) is None


@pytest.mark.parametrize(
    "event_name",
    [
        "ObjectRemoved:Delete",
        "ObjectRemoved:DeleteMarkerCreated",
        "ObjectRestore:Completed",
        "ObjectTagging:Put",
        "LifecycleExpiration:Delete",
        "EventBridge:Object Something",
    ],
)
def test_non_created_events_are_skipped(event_name):
    # GIVEN an event that is not an upload
    # WHEN filtered
    reason = skip_reason(ref("scenes/a.tif", event_name))
    # THEN it is skipped, the reason naming the event
    assert reason is not None
    assert "not an object-created event" in reason and event_name in reason


@pytest.mark.parametrize("key", ["scenes/a.png", "scenes/a.tif.gz", "scenes/a", "scenes/motif", "scenes/a.tif "])
def test_other_suffixes_are_skipped(key):
    # GIVEN an upload whose key does not end in a configured suffix
    # WHEN filtered
    reason = skip_reason(ref(key))
    # THEN it is skipped, the reason listing the suffixes
    assert reason == "key does not end in .tif or .tiff"


@pytest.mark.parametrize("key", ["scenes/a.npy", "scenes/a.error.json", "scenes/A.NPY", "scenes/a.Error.JSON"])
@pytest.mark.parametrize(
    "suffixes",
    [(".tif", ".tiff"), (".npy", ".tif"), (".json",), ("npy",), (".NPY",)],
    ids=["default", "npy-configured", "json-configured", "no-dot", "upper"],
)
def test_own_outputs_are_always_skipped(key, suffixes):
    # GIVEN an upload of one of the function's own outputs, even with suffixes misconfigured to match it
    # WHEN filtered
    reason = skip_reason(ref(key), suffixes)
    # THEN it is skipped as our own output: the function can never trigger itself
    assert reason is not None and reason.startswith("the function's own output")


def test_own_output_suffixes_are_the_writers():
    # GIVEN the suffixes the function writes WHEN each is filtered THEN each is skipped (no drift)
    for suffix in OWN_OUTPUT_SUFFIXES:
        assert skip_reason(ref("scenes/a" + suffix), (suffix,)) is not None


@pytest.mark.parametrize("key", ["scenes/", "scenes/folder.tif/"])
def test_directory_placeholders_are_skipped(key):
    # GIVEN the zero-byte "folder" object consoles create
    # WHEN filtered
    # THEN it is skipped
    assert skip_reason(ref(key)) == "a directory placeholder (key ends in '/')"


@pytest.mark.parametrize(
    ("suffixes", "key", "processed"),
    [
        ((".jp2",), "scenes/a.jp2", True),
        ((".jp2",), "scenes/a.tif", False),
        (("jp2", "TIF"), "scenes/a.tif", True),
        ((".vrt", ".tif"), "scenes/a.VRT", True),
        (("",), "scenes/a.tif", False),  # an empty entry must not accept everything
        ((), "scenes/a.tif", False),
    ],
)
def test_suffixes_are_configurable(suffixes, key, processed):
    # GIVEN a suffix configuration (as settings.input_suffixes, or raw)
    # WHEN filtered
    reason = skip_reason(ref(key), suffixes)
    # THEN the key is processed exactly when it ends in one of them, case-insensitively
    assert (reason is None) == processed


@pytest.mark.parametrize(
    "key",
    [
        "scenes/a.mask.TIF",
        "scenes/a.MASK.tif",
        "scenes/a.mask.tif",
        "scenes/a.score.TIF",
        "scenes/a.Score.Tif",
        "scenes/a.stac.json",
        "scenes/a.STAC.JSON",
        "scenes/a.thumb.png",
        "scenes/a.THUMB.PNG",
    ],
)
@pytest.mark.parametrize("suffixes", [(".tif", ".tiff"), (".TIF",), (".tif", ".json", ".png")])
def test_the_cog_quicklook_and_item_are_always_skipped(key, suffixes):
    # GIVEN one of the outputs OUTPUTS adds, in any case, even with suffixes that would match it
    # WHEN filtered
    reason = skip_reason(ref(key), suffixes)
    # THEN it is skipped as our own output: a COG beside a .tif input never starts the function again
    assert reason is not None and reason.startswith("the function's own output")


@pytest.mark.parametrize(
    "key",
    [
        "scenes/a.tif",
        "scenes/a.TIF",
        "scenes/scene_mask.tif",
        "scenes/amask.tif",
        "scenes/mask.tif",
        "scenes/a.mask.tiff",
    ],
)
def test_inputs_that_only_look_like_outputs_are_processed(key):
    assert skip_reason(ref(key)) is None
