"""Model cards: valid ones parse into ModelCard, invalid ones are a ConfigError naming the problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from model.card import DEFAULT_ARCHITECTURE, DEFAULT_CARD_PATH, ModelCard, load_card, parse_card
from model.errors import ConfigError

SHA = "ab" * 32
VALID: dict[str, Any] = {
    "name": "canopy",
    "architecture": dict(DEFAULT_ARCHITECTURE),
    "bands": list(range(1, 11)),
    "normalisation": "p90",
    "threshold": 0.5,
    "tile_size": 512,
    "tile_overlap": 64,
    "weights": {"file": "canopy.pt", "sha256": SHA},
}


def card_with(**changes: Any) -> dict[str, Any]:
    """VALID with top-level keys replaced (``None`` deletes one)."""
    raw = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


def test_a_valid_card_parses_every_field(tmp_path):
    card = parse_card(card_with(training={"steps": 3}), tmp_path / "canopy.json")
    assert card == ModelCard(
        name="canopy",
        path=tmp_path / "canopy.json",
        weights_file="canopy.pt",
        weights_sha256=SHA,
        architecture=dict(DEFAULT_ARCHITECTURE),
        bands=tuple(range(1, 11)),
        extra={"training": {"steps": 3}},
    )
    assert card.weights_path == (tmp_path / "canopy.pt").resolve()
    assert card.size_multiple == 16


@pytest.mark.parametrize(
    ("changes", "field", "expected"),
    [
        ({"name": None}, "name", "canopy"),  # the file's stem
        ({"bands": None}, "bands", tuple(range(1, 11))),
        ({"architecture": None}, "architecture", DEFAULT_ARCHITECTURE),
        ({"architecture": {"depth": 4}}, "size_multiple", 8),  # merged over the defaults
        ({"threshold": None, "tile_size": None, "tile_overlap": None}, "threshold", 0.5),
        ({"tile_overlap": 0}, "tile_overlap", 0),
        ({"weights": {"file": "w.pt", "sha256": SHA.upper()}}, "weights_sha256", SHA),
        ({"bands": [4, 3, 2, 8, 5, 6, 7, 9, 11, 12]}, "bands", (4, 3, 2, 8, 5, 6, 7, 9, 11, 12)),
    ],
)
def test_defaults_and_normalised_values(tmp_path, changes, field, expected):
    card = parse_card(card_with(**changes), tmp_path / "canopy.json")
    assert getattr(card, field) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([VALID], "must be a JSON object"),
        (card_with(weights=None), "weights"),
        (card_with(weights={"file": "w.pt"}), "sha256"),
        (card_with(weights={"file": "w.pt", "sha256": "abc"}), "64 hex digits"),
        (card_with(bands=[1, 2, 3]), "3 bands but in_channels=10"),
        (card_with(bands=list(range(0, 10))), "1-based"),
        (card_with(bands="all"), "invalid"),
        (card_with(normalisation="minmax"), "normalisation"),
        (card_with(tile_size=500), "multiple of 16"),
        (card_with(tile_size=0), "tile_size"),
        (card_with(tile_overlap=256), "tile_overlap"),
        (card_with(tile_overlap=-1), "tile_overlap"),
        (card_with(threshold="high"), "invalid"),
    ],
)
def test_invalid_cards_are_config_errors(tmp_path, raw, message):
    # GIVEN a broken card WHEN it is parsed THEN a ConfigError names the card and the problem
    with pytest.raises(ConfigError, match=message) as info:
        parse_card(raw, tmp_path / "broken.json")
    assert "broken.json" in str(info.value)


def test_load_card_reads_json_relative_to_the_card(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps(VALID))
    card = load_card(tmp_path / "c.json")
    assert card.path == (tmp_path / "c.json").resolve()
    assert card.weights_path == (tmp_path / "canopy.pt").resolve()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), ("{not json", "not readable JSON"), ("", "not readable JSON")],
)
def test_load_card_problems_are_config_errors(tmp_path, content, message):
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_card(path)


def test_the_demo_card_is_valid():
    card = load_card(DEFAULT_CARD_PATH)
    assert isinstance(card, ModelCard)
    assert Path(card.weights_path).is_file()
    assert card.architecture == DEFAULT_ARCHITECTURE
    assert card.bands == tuple(range(1, 11))
