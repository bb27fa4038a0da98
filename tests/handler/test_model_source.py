"""handler/model_source.py: MODEL_URI weights fetched once, cached by checksum, verified against the card."""

from __future__ import annotations

import os
import stat

import pytest

from handler.errors import TransientError
from handler.model_source import cached_weights_path, fetch_weights, load_runtime_model, parse_s3_uri
from handler.settings import Settings
from handler.storage import Storage
from model.card import load_card
from model.errors import CheckpointError, ConfigError
from model.network.checkpoint import clear_model_cache


@pytest.fixture
def card(tiny_model_card):
    return load_card(tiny_model_card)


@pytest.fixture
def storage(moto_endpoint) -> Storage:
    return Storage.from_defaults(max_attempts=1)


@pytest.fixture
def weights_uri(card, s3_client, make_bucket) -> str:
    """The card's weights uploaded to moto; returns their s3:// URI."""
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="models/unet v1.pt", Body=card.weights_path.read_bytes())
    return f"s3://{bucket}/models/unet v1.pt"


def count_gets(storage: Storage) -> list[str]:
    calls: list[str] = []
    storage.client.meta.events.register("before-send.s3.GetObject", lambda request, **_: calls.append(request.url))
    return calls


@pytest.mark.parametrize(
    ("uri", "expected"),
    [("s3://b/k.pt", ("b", "k.pt")), ("s3://b/a/b/c.pt", ("b", "a/b/c.pt"))],
)
def test_parse_s3_uri(uri, expected):
    assert parse_s3_uri(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3://bucket", "s3://bucket/", "s3://bucket/dir/", "https://b/k.pt"])
def test_parse_s3_uri_refuses_what_is_not_an_object(uri):
    with pytest.raises(ConfigError):
        parse_s3_uri(uri)


def test_fetch_downloads_once_into_a_file_named_by_checksum(card, weights_uri, storage, tmp_path):
    cache = tmp_path / "cache"
    gets = count_gets(storage)
    # WHEN fetched twice (a second process in the same container)
    first = fetch_weights(card, weights_uri, cache, storage)
    second = fetch_weights(card, weights_uri, cache, storage)
    # THEN one download, into <sha256>.pt, private, identical to the card's weights
    assert first == second == cached_weights_path(card, cache) == cache / f"{card.weights_sha256}.pt"
    assert len(gets) == 1
    assert first.read_bytes() == card.weights_path.read_bytes()
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
    assert sorted(p.name for p in cache.iterdir()) == [first.name]


def test_corrupt_cache_is_fetched_again(card, weights_uri, storage, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    cached_weights_path(card, cache).write_bytes(b"truncated")
    path = fetch_weights(card, weights_uri, cache, storage)
    assert path.read_bytes() == card.weights_path.read_bytes()


def test_checksum_mismatch_is_refused_and_nothing_is_cached(card, storage, s3_client, make_bucket, tmp_path):
    # GIVEN MODEL_URI pointing at other weights than the card describes
    bucket = make_bucket()
    s3_client.put_object(Bucket=bucket, Key="wrong.pt", Body=b"not these weights")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_weights(card, f"s3://{bucket}/wrong.pt", cache, storage)
    assert list(cache.iterdir()) == []


def test_missing_weights_are_a_checkpoint_error(card, storage, make_bucket, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        fetch_weights(card, f"s3://{make_bucket()}/nope.pt", tmp_path / "cache", storage)


def test_unreachable_s3_is_transient(card, tmp_path):
    storage = Storage.from_defaults("http://127.0.0.1:9", max_attempts=1)
    with pytest.raises(TransientError):
        fetch_weights(card, "s3://bucket/k.pt", tmp_path / "cache", storage)


def test_load_runtime_model_uses_the_uri_weights(tiny_model_card, card, weights_uri, storage, tmp_path):
    # GIVEN the card's weights file removed from beside it: only MODEL_URI can provide them
    clear_model_cache()
    moved = tmp_path / "elsewhere.pt"
    card.weights_path.rename(moved)
    try:
        settings = Settings(model_card=tiny_model_card, model_uri=weights_uri, model_cache_dir=tmp_path / "cache")
        model = load_runtime_model(settings, storage)
        assert model.sha256 == card.weights_sha256
        with pytest.raises(CheckpointError):
            load_runtime_model(Settings(model_card=tiny_model_card, model_cache_dir=tmp_path / "c2"), storage)
    finally:
        moved.rename(card.weights_path)
        clear_model_cache()


def test_without_uri_the_images_weights_are_used(tiny_model_card, card):
    model = load_runtime_model(Settings(model_card=tiny_model_card))
    assert model.sha256 == card.weights_sha256
