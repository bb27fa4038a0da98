"""``rasterfn predict IN.tif [-o OUT.npy] [--output ...] [--model CARD.json] [--engine ...]``: one raster.

Settings come from the environment (:func:`handler.settings.get_settings`); flags given on the command line
win. Prints where the output went, its shape, the positive fraction and the time; a raster that cannot be
processed is a one-line message and exit status 2, with no output file left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from handler.model_source import load_runtime_model
from handler.runtime import options_from_settings, running_precision
from handler.settings import get_settings
from model.errors import InputError
from model.predictor.predict import predict_file

EXIT_INPUT_ERROR = 2


def run_predict(args: argparse.Namespace) -> int:
    settings = get_settings()
    overrides = {
        "model_card": Path(args.model) if args.model else None,
        "output_mode": args.output,
        "engine": args.engine,
        "precision": args.precision,
        "device": args.device,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    src = Path(args.input)
    dst = Path(args.out) if args.out else src.with_suffix(".npy")
    progress = not args.no_progress and sys.stderr.isatty()
    options = dataclasses.replace(options_from_settings(settings), progress=progress)
    model = load_runtime_model(settings)
    try:
        result = predict_file(model, src, dst, options)
    except InputError as exc:
        print(f"rasterfn predict: {exc}", file=sys.stderr)  # the message names the file, once
        return EXIT_INPUT_ERROR
    height, width = result.shape
    precision = running_precision(settings, model)
    print(
        f"{result.out_path}  {height} x {width} {result.dtype} ({result.output}), "
        f"{result.positive_fraction:.1%} of {result.valid_pixels:,} valid pixels above "
        f"{model.card.threshold}, {result.tiles} tile(s), {result.seconds:.2f} s on {model.engine} {precision}"
    )
    return 0
