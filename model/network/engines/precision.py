"""``PRECISION=auto``: the fastest precision this CPU runs natively that the card verified against torch.

Fastest first: int8, bf16, fp32. A precision is a candidate when the CPU runs it natively (bf16: AVX-512 BF16
or AMX; int8: VNNI/AMX, OpenVINO's ``INT8`` capability; fp32 always) and the card's export measured its graph
against torch's fp32 forward with at least :data:`AUTO_MIN_AGREEMENT` of the mask on EVERY held-out scene
(``min_scene_mask_agreement``). fp32 is the fallback whatever the card says. The torch engine is the reference
and always runs fp32 under ``auto``. On the demo card: bf16 where the CPU has it (99.993% on the worst scene),
never int8 (99.970%), else fp32.

Example:
    >>> choose_precision({"int8": 0.9997, "bf16": 0.99993, "fp32": 1.0}, native={"int8", "bf16"})
    ('bf16', 'bf16: native on this CPU, 99.9930% mask agreement with torch on the worst held-out scene')
    >>> choose_precision({"bf16": 0.99993}, native=set())[0]
    'fp32'
"""

from __future__ import annotations

from collections.abc import Mapping

from model.card import ModelCard
from model.network.engines.artefacts import verified_agreement

AUTO = "auto"
AUTO_MIN_AGREEMENT = 0.9999
FASTEST_FIRST = ("int8", "bf16", "fp32")
NATIVE_CAPABILITY = {"int8": "INT8", "bf16": "BF16"}  # OpenVINO's CPU OPTIMIZATION_CAPABILITIES


def choose_precision(worst_agreement: Mapping[str, float | None], native: set[str]) -> tuple[str, str]:
    """The precision ``auto`` means and why (one line for the log); pure.

    ``worst_agreement``: per precision, the card's worst held-out scene's mask agreement with torch (None or
    absent: not verified); ``native``: the precisions besides fp32 this CPU runs natively.
    """
    for precision in FASTEST_FIRST[:-1]:
        agreement = worst_agreement.get(precision)
        if precision in native and agreement is not None and agreement >= AUTO_MIN_AGREEMENT:
            worst = f"{agreement:.4%} mask agreement with torch on the worst held-out scene"
            return precision, f"{precision}: native on this CPU, {worst}"
    skipped = ", ".join(f"{p} ({_why_not(p, worst_agreement.get(p), native)})" for p in FASTEST_FIRST[:-1])
    return "fp32", f"fp32: no faster precision qualifies: {skipped}"


def _why_not(precision: str, agreement: float | None, native: set[str]) -> str:
    if precision not in native:
        return "not native here"
    if agreement is None:
        return "not verified by the card"
    return f"{agreement:.4%} < {AUTO_MIN_AGREEMENT:.2%}"


def card_worst_agreement(card: ModelCard) -> dict[str, float | None]:
    """Per precision, the worst held-out scene's mask agreement the card's export measured (None: not measured)."""
    worst: dict[str, float | None] = {}
    for precision in FASTEST_FIRST:
        agreement = verified_agreement(card, precision)
        value = None if agreement is None else agreement.get("min_scene_mask_agreement")
        worst[precision] = None if value is None else float(value)
    return worst


def auto_precision(card: ModelCard, engine: str) -> tuple[str, str]:
    """What ``PRECISION=auto`` runs ``card`` at on ``engine`` here, and why."""
    if engine != "openvino":
        return "fp32", f"fp32: the {engine} engine is the reference"
    from model.network.engines.openvino_engine import cpu_capabilities

    capabilities = cpu_capabilities()
    native = {p for p, capability in NATIVE_CAPABILITY.items() if capability in capabilities}
    return choose_precision(card_worst_agreement(card), native)
