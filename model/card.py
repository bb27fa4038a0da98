"""Model cards: the JSON file beside the weights that says how to run them.

A card names the architecture, the bands to read, the normalisation, the threshold, the tile geometry, the
weights file and its sha256, and how the weights were made. Paths in a card are relative to the card.

Example:
    >>> card = load_card(DEFAULT_CARD_PATH)
    >>> card.architecture["in_channels"] == len(card.bands)
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.errors import ConfigError

DEFAULT_CARD_PATH = Path(__file__).resolve().parent / "weights" / "demo.json"
NORMALISATIONS = ("p90",)
DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "num_classes": 1,
    "in_channels": 10,
    "depth": 5,
    "start_filts": 16,
    "up_mode": "transpose",
    "merge_mode": "concat",
}


@dataclass(frozen=True)
class ModelCard:
    """What a set of weights needs to run; see ``model/weights/demo.json``."""

    name: str
    path: Path
    weights_file: str
    weights_sha256: str
    architecture: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ARCHITECTURE))
    bands: tuple[int, ...] = tuple(range(1, 11))
    normalisation: str = "p90"
    threshold: float = 0.5
    tile_size: int = 512
    tile_overlap: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_path(self) -> Path:
        return (self.path.parent / self.weights_file).resolve()

    @property
    def size_multiple(self) -> int:
        return 2 ** (int(self.architecture["depth"]) - 1)


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a model card; any problem is a :class:`ConfigError` naming the card."""
    path = Path(path).resolve()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"model card not found: {path}") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"model card {path} is not readable JSON: {exc}") from exc
    return parse_card(raw, path)


def parse_card(raw: Any, path: Path) -> ModelCard:
    """Validate the decoded JSON of a card (pure)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"model card {path} must be a JSON object")
    try:
        weights = raw["weights"]
        architecture = {**DEFAULT_ARCHITECTURE, **raw.get("architecture", {})}
        bands = tuple(int(b) for b in raw.get("bands", range(1, architecture["in_channels"] + 1)))
        card = ModelCard(
            name=str(raw.get("name", path.stem)),
            path=path,
            weights_file=str(weights["file"]),
            weights_sha256=str(weights["sha256"]).lower(),
            architecture=architecture,
            bands=bands,
            normalisation=str(raw.get("normalisation", "p90")),
            threshold=float(raw.get("threshold", 0.5)),
            tile_size=int(raw.get("tile_size", 512)),
            tile_overlap=int(raw.get("tile_overlap", 64)),
            extra={k: v for k, v in raw.items() if k not in _KNOWN_KEYS},
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"model card {path} is invalid: {exc!r}") from exc
    _check_card(card)
    return card


_KNOWN_KEYS = {"name", "weights", "architecture", "bands", "normalisation", "threshold", "tile_size", "tile_overlap"}


def _check_card(card: ModelCard) -> None:
    problems = []
    if len(card.bands) != card.architecture["in_channels"]:
        problems.append(f"{len(card.bands)} bands but in_channels={card.architecture['in_channels']}")
    if any(b < 1 for b in card.bands):
        problems.append("band indexes are 1-based")
    if card.normalisation not in NORMALISATIONS:
        problems.append(f"normalisation must be one of {NORMALISATIONS}")
    if card.tile_size <= 0 or card.tile_size % card.size_multiple:
        problems.append(f"tile_size must be a positive multiple of {card.size_multiple}")
    if not 0 <= card.tile_overlap < card.tile_size // 2:
        problems.append("tile_overlap must be in [0, tile_size / 2)")
    if len(card.weights_sha256) != 64:
        problems.append("weights.sha256 must be 64 hex digits")
    if problems:
        raise ConfigError(f"model card {card.path} is invalid: " + "; ".join(problems))
