"""The serving graphs a card names (its ``serving`` section, written by ``rasterfn export``), and their checks.

A card's ``serving.graphs`` maps a graph name (``fp32``, ``int8``) to its files, each pinned by sha256, and
to the agreement with torch measured when it was exported::

    "serving": {"engine": "openvino", "graphs": {"fp32": {"files": {
        "xml": {"file": "demo.fp32.xml", "sha256": "..."}, "bin": {"file": "demo.fp32.bin", "sha256": "..."}},
        "agreement": {"mask_agreement": 1.0, "max_abs_score_diff": 2.4e-06}}, "int8": {...}}}

``PRECISION=bf16`` runs the fp32 graph with bf16 arithmetic where the CPU has it; what that measured against
torch (on a CPU with native bf16) is the fp32 graph's ``agreement_by_precision.bf16``. Pure functions over the
card, except :func:`verify_files`, which reads the files.

Example:
    >>> graph_for(card, "bf16").name                                                    # doctest: +SKIP
    'fp32'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.card import ModelCard
from model.errors import CheckpointError, ConfigError
from model.network.digests import sha256_file

SERVING_KEY = "serving"
GRAPH_FILE_ROLES = ("xml", "bin")  # OpenVINO IR: the graph and its weights
GRAPH_OF_PRECISION = {"fp32": "fp32", "bf16": "fp32", "int8": "int8"}


@dataclass(frozen=True)
class GraphFile:
    file: str  # relative to the card
    sha256: str


@dataclass(frozen=True)
class ServingGraph:
    """One exported graph of a card: its files by role and what its export measured."""

    name: str
    engine: str
    files: dict[str, GraphFile]
    agreement: dict[str, Any] = field(default_factory=dict)
    # the graph run at another inference precision (fp32's graph at bf16): what that measured
    agreement_by_precision: dict[str, dict[str, Any]] = field(default_factory=dict)


def serving_graphs(card: ModelCard) -> dict[str, ServingGraph]:
    """The card's exported graphs by name (empty when it has none); a malformed section is a ConfigError."""
    section = card.extra.get(SERVING_KEY)
    if section is None:
        return {}
    try:
        engine = str(section["engine"])
        graphs = {}
        for name, raw in section["graphs"].items():
            files = {role: GraphFile(str(f["file"]), str(f["sha256"]).lower()) for role, f in raw["files"].items()}
            by_precision = {str(p): dict(a) for p, a in raw.get("agreement_by_precision", {}).items()}
            graphs[str(name)] = ServingGraph(str(name), engine, files, dict(raw.get("agreement", {})), by_precision)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"model card {card.path}: invalid '{SERVING_KEY}' section ({exc!r})") from exc
    for graph in graphs.values():
        if sorted(graph.files) != sorted(GRAPH_FILE_ROLES) or any(len(f.sha256) != 64 for f in graph.files.values()):
            raise ConfigError(
                f"model card {card.path}: graph {graph.name!r} needs files {GRAPH_FILE_ROLES}, each with a sha256"
            )
    return graphs


def graph_for(card: ModelCard, precision: str) -> ServingGraph | None:
    """The graph that serves ``precision``, or None when the card has none for it."""
    return serving_graphs(card).get(GRAPH_OF_PRECISION.get(precision, precision))


def verified_agreement(card: ModelCard, precision: str) -> dict[str, Any] | None:
    """What the card's export measured for ``precision`` against torch, or None when it measured nothing."""
    graph = graph_for(card, precision)
    if graph is None:
        return None
    if precision == graph.name:
        return graph.agreement or None
    return graph.agreement_by_precision.get(precision)


def local_paths(card: ModelCard, graph: ServingGraph) -> dict[str, Path]:
    """Where the card's own copies of ``graph``'s files are: beside the card."""
    return {role: (card.path.parent / f.file).resolve() for role, f in graph.files.items()}


def verify_files(card: ModelCard, graph: ServingGraph, paths: Mapping[str, Path]) -> dict[str, Path]:
    """``paths`` when every file exists and has the card's sha256, else :class:`CheckpointError`."""
    for role, expected in graph.files.items():
        path = Path(paths[role])
        if not path.is_file():
            raise CheckpointError(
                f"{graph.name} graph file not found: {path} (named by card {card.path}; run `rasterfn export`)"
            )
        digest = sha256_file(path)
        if digest != expected.sha256:
            raise CheckpointError(f"{path} has sha256 {digest}, but card {card.path} expects {expected.sha256}")
    return {role: Path(paths[role]) for role in graph.files}
