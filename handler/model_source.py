"""Where the function's weights come from: the image (the card's own file) or ``MODEL_URI=s3://bucket/key``.

With ``MODEL_URI`` the card stays the image's (or ``MODEL_CARD``); only the weights file is fetched, once per
container, into ``MODEL_CACHE_DIR`` under a name made of the card's sha256 (never of the key), and verified
against the card before it is used. A cached file with the right checksum is reused by later processes of the
same container (Knative workers, Lambda re-inits after an error); a wrong one is fetched again. A download
whose checksum differs from the card is refused with :class:`CheckpointError` at start-up.

Example:
    >>> model = load_runtime_model(Settings(model_uri="s3://models/unet/v3.pt"), Storage.from_defaults())
    ... # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from handler.errors import ObjectMissingError
from handler.settings import ENV_MODEL_URI, Settings
from handler.storage import Storage, s3_uri
from model.card import ModelCard, load_card
from model.checkpoint import LoadedModel, load_model, sha256_file
from model.errors import CheckpointError, ConfigError, InputError

log = logging.getLogger(__name__)

# Far above any U-Net checkpoint (the demo's is ~4 MB); a bound so a wrong MODEL_URI cannot fill the disk.
MAX_WEIGHTS_BYTES = 2 * 1024**3
CACHE_SUFFIX = ".pt"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.pt`` -> ``("bucket", "a/b.pt")``; anything else is a :class:`ConfigError`."""
    if not uri.startswith("s3://"):
        raise ConfigError(f"{ENV_MODEL_URI} must be s3://bucket/key, got {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"{ENV_MODEL_URI} must name an object, s3://bucket/key, got {uri!r}")
    return bucket, key


def cached_weights_path(card: ModelCard, cache_dir: Path) -> Path:
    """Where the weights of ``card`` are cached: named by their checksum, so two cards never collide."""
    return cache_dir / f"{card.weights_sha256}{CACHE_SUFFIX}"


def fetch_weights(card: ModelCard, uri: str, cache_dir: Path, storage: Storage) -> Path:
    """The verified local copy of the weights at ``uri`` for ``card``, downloading them if not cached."""
    bucket, key = parse_s3_uri(uri)
    cached = cached_weights_path(card, cache_dir)
    if cached.is_file():
        if sha256_file(cached) == card.weights_sha256:
            log.info("model weights from cache %s", cached)
            return cached
        log.warning("cached weights %s do not match card %s; fetching them again", cached, card.path)
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = storage.head(bucket, key)
    if info is None:
        raise CheckpointError(f"{ENV_MODEL_URI} {uri} does not exist")
    try:
        tmp = storage.download(
            info, cache_dir, max_bytes=MAX_WEIGHTS_BYTES, reserve_bytes=0, prefix=".weights-", limit_name="weights"
        )
    except (ObjectMissingError, InputError) as exc:
        raise CheckpointError(f"cannot fetch {ENV_MODEL_URI} {uri}: {exc}") from exc
    try:
        digest = sha256_file(tmp)
        if digest != card.weights_sha256:
            raise CheckpointError(
                f"{ENV_MODEL_URI} {s3_uri(bucket, key)} has sha256 {digest}, "
                f"but card {card.path} expects {card.weights_sha256}"
            )
        # Atomic: a concurrent process sees either no file or the whole verified file.
        os.replace(tmp, cached)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("model weights fetched from %s into %s", uri, cached)
    return cached


def load_runtime_model(settings: Settings, storage: Storage | None = None) -> LoadedModel:
    """The model the settings name, loaded once per process (``MODEL_URI`` weights fetched first)."""
    if settings.model_uri is None:
        return load_model(settings.model_card)
    if storage is None:
        storage = Storage.from_defaults()
    card = load_card(settings.model_card)
    return load_model(settings.model_card, fetch_weights(card, settings.model_uri, settings.model_cache_dir, storage))
