"""``rasterfn export [--model CARD.json] [--out-dir DIR] [--calibrate DIR]``: the serving engine's graphs.

Prints each graph's files and its measured agreement with torch; a graph that misses its bar is a one-line
error and exit status 2, with the card and files left as they were. Needs torch and nncf (``[export]``).
"""

from __future__ import annotations

import argparse

from handler.settings import get_settings


def run_export(args: argparse.Namespace) -> int:
    from model.engines.export import export_card

    card = args.model or get_settings().model_card
    report = export_card(card, out_dir=args.out_dir, calibrate=args.calibrate)
    for name, entry in report.graphs.items():
        files = ", ".join(f["file"] for f in entry["files"].values())
        agreement = entry["agreement"]
        print(
            f"{name}: {files}  mask agreement with torch {agreement['mask_agreement']:.4%} "
            f"(worst scene {agreement['min_scene_mask_agreement']:.4%}), max abs score diff "
            f"{agreement['max_abs_score_diff']:.3g} over {agreement['scenes']} held-out scenes"
        )
    print(f"card updated: {report.card}")
    return 0
