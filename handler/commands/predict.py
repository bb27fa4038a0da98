"""``rasterfn predict IN.tif [-o OUT.npy] [--output ...] [--outputs npy,cog,stac] [--model CARD.json] ...``.

Settings come from the environment (:func:`handler.settings.get_settings`); flags given on the command line
win. Prints each file written, its shape, the positive fraction and the time; a raster that cannot be
processed is a one-line message and exit status 2, with no output file left behind. ``--outputs`` names the
files beside ``OUT.npy`` as the function names them beside an upload: ``OUT.mask.TIF``, ``OUT.thumb.png``,
``OUT.stac.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from handler.model_source import load_runtime_model
from handler.objects import STAC_SUFFIX, product_keys
from handler.products import LOCAL_NAMES, Published, describe, make_products, relative_href
from handler.runtime import options_from_settings, running_precision
from handler.settings import get_settings, parse_outputs
from model.errors import InputError

EXIT_INPUT_ERROR = 2


def run_predict(args: argparse.Namespace) -> int:
    settings = get_settings()
    overrides = {
        "model_card": Path(args.model) if args.model else None,
        "output_mode": args.output,
        "outputs": parse_outputs(args.outputs) if getattr(args, "outputs", None) else None,
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
    # Named as beside an upload: OUT.npy's stem, with OUT's directory as the "bucket".
    names = product_keys(dst.name, settings.outputs, settings.output_mode)
    if "npy" in names:
        names["npy"] = dst.name  # exactly -o's path, as before
    try:
        _check_destination(src, dst.parent, names.values())
        with tempfile.TemporaryDirectory(prefix="rasterfn-predict-", dir=dst.parent) as workdir:
            work = Path(workdir)
            products = make_products(model, src, work, options, settings.outputs)
            files = {kind: products.files[kind] for kind in names if kind != "stac"}
            if "stac" in names:
                published = [Published(k, relative_href(names["stac"], names[k]), path) for k, path in files.items()]
                source = os.path.relpath(src.resolve(), dst.parent.resolve())
                files["stac"] = describe(
                    model,
                    products.result,
                    item_id=names["stac"].removesuffix(STAC_SUFFIX),
                    published=published,
                    source_href=source if source.startswith("..") else "./" + source,
                    when=datetime.fromtimestamp(src.stat().st_mtime, UTC),
                    dst=work / LOCAL_NAMES["stac"],
                )
            # Every file made before any is moved: a failure leaves none of them beside the input.
            for kind, path in files.items():
                os.replace(path, dst.parent / names[kind])
    except InputError as exc:
        print(f"rasterfn predict: {exc}", file=sys.stderr)  # the message names the file, once
        return EXIT_INPUT_ERROR
    result = products.result
    height, width = result.shape
    first, *others = (dst.parent / name for name in names.values())
    precision = running_precision(settings, model)
    print(
        f"{first}  {height} x {width} {result.dtype} ({result.output}), "
        f"{result.positive_fraction:.1%} of {result.valid_pixels:,} valid pixels above "
        f"{model.card.threshold}, {result.tiles} tile(s), {result.seconds:.2f} s on {model.engine} {precision}"
    )
    for path in others:
        print(path)
    return 0


def _check_destination(src: Path, directory: Path, names) -> None:
    if not directory.is_dir():
        raise InputError(f"output directory {directory} does not exist")
    if src.exists() and any((directory / name).resolve() == src.resolve() for name in names):
        raise InputError(f"refusing to overwrite the input {src.name} with its own output")
