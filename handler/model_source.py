"""Where the function's weights come from: the image (the card's own files) or ``MODEL_URI=s3://bucket/key``.

With ``MODEL_URI`` the card stays the image's (or ``MODEL_CARD``); only the files the chosen engine runs are
fetched, once per container, into ``MODEL_CACHE_DIR`` under names made of the card's sha256 (never of the key),
and verified against the card before they are used. The torch engine fetches the checkpoint at ``MODEL_URI``;
the serving engine fetches the card's exported graph files from beside it (``s3://bucket/models/demo.pt`` ->
``s3://bucket/models/demo.fp32.xml`` and ``.bin``), so one upload of ``rasterfn export``'s folder serves both.
A cached file with the right checksum is reused by later processes of the same container (Knative workers,
Lambda re-inits after an error); a wrong one is fetched again. A download whose checksum differs from the card
is refused with :class:`CheckpointError` at start-up.

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
from model.errors import CheckpointError, ConfigError, InputError
from model.network.digests import sha256_file
from model.network.engines.artefacts import graph_for
from model.network.engines.base import InferenceModel
from model.network.engines.loading import load_inference_model, resolve_engine, resolve_precision

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


def sibling_uri(uri: str, file_name: str) -> str:
    """``s3://b/models/demo.pt`` + ``demo.fp32.xml`` -> ``s3://b/models/demo.fp32.xml``."""
    bucket, key = parse_s3_uri(uri)
    folder = key.rpartition("/")[0]
    return s3_uri(bucket, f"{folder}/{file_name}" if folder else file_name)


def fetch_weights(card: ModelCard, uri: str, cache_dir: Path, storage: Storage) -> Path:
    """The verified local copy of the checkpoint at ``uri`` for ``card``, downloading it if not cached."""
    return fetch_verified(uri, card.weights_sha256, cached_weights_path(card, cache_dir), storage, card)


def fetch_verified(uri: str, sha256: str, cached: Path, storage: Storage, card: ModelCard) -> Path:
    """``cached`` if it has ``sha256``, else the object at ``uri`` downloaded there, checked against ``sha256``."""
    bucket, key = parse_s3_uri(uri)
    cache_dir = cached.parent
    if cached.is_file():
        if sha256_file(cached) == sha256:
            log.info("model file from cache %s", cached)
            return cached
        log.warning("cached file %s does not match card %s; fetching it again", cached, card.path)
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
        if digest != sha256:
            raise CheckpointError(
                f"{ENV_MODEL_URI} {s3_uri(bucket, key)} has sha256 {digest}, but card {card.path} expects {sha256}"
            )
        # Atomic: a concurrent process sees either no file or the whole verified file.
        os.replace(tmp, cached)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    log.info("model file fetched from %s into %s", uri, cached)
    return cached


def load_runtime_model(settings: Settings, storage: Storage | None = None) -> InferenceModel:
    """The model the settings name on the engine they pick, loaded once per process (``MODEL_URI`` files first)."""
    card = load_card(settings.model_card)
    engine = resolve_engine(settings.engine, card, settings.precision, settings.device)
    precision = resolve_precision(settings.precision, card, engine)  # auto: resolved once, here, and logged
    load = {"engine": engine, "precision": precision, "device": settings.device}
    if settings.model_uri is None:
        return load_inference_model(card.path, **load)
    if storage is None:
        storage = Storage.from_defaults()
    if engine == "torch":
        return load_inference_model(
            card.path, **load, weights_path=fetch_weights(card, settings.model_uri, settings.model_cache_dir, storage)
        )
    graph = graph_for(card, precision)
    assert graph is not None  # resolve_engine picked the serving engine only for a card that has it
    paths = {
        role: fetch_verified(
            sibling_uri(settings.model_uri, f.file),
            f.sha256,
            settings.model_cache_dir / f"{f.sha256}{Path(f.file).suffix}",
            storage,
            card,
        )
        for role, f in graph.files.items()
    }
    return load_inference_model(card.path, **load, graph_paths=paths)
