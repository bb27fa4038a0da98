"""``rasterfn``: the command line. Thin: each sub-command parses flags and calls one function elsewhere.

rasterfn predict IN.tif [-o OUT.npy] [--output mask|mask-uint8|score] [--model CARD.json] [--engine E]
rasterfn export [--model CARD.json] [--out-dir DIR] [--calibrate DIR]
rasterfn replay EVENT.json [--endpoint-url URL] [--seed]
rasterfn demo [FILES...] [--serve]
rasterfn tf-local [--plugin-mirror DIR] [--terraform PATH]
rasterfn serve [--host 127.0.0.1] [--port 8080] [--allowed-buckets B[/prefix/]] [--allow-unauthenticated]
rasterfn relay [--host 127.0.0.1] [--port 8080]
rasterfn train-demo [--out-dir model/weights]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence

from model.errors import RasterfnError
from model.options import DEVICES, ENGINES, OUTPUT_MODES, PRECISION_SETTINGS

# Commands that run only from a checkout, and what they need that the image leaves out (.dockerignore, extras).
LOCAL_COMMANDS = {
    "replay": ("handler.local", "moto"),
    "demo": ("handler.local", "moto"),
    "tf-local": ("handler.local", "moto"),
    "train-demo": ("model.training",),
    "export": ("model.training", "torch", "nncf"),
}
LOCAL_TOOLS_MISSING = (
    "this installation has only the function's runtime (e.g. the container image); "
    "run it from a checkout with `make install` (or `pip install 'rasterfn[local]'`; export: 'rasterfn[export]')"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rasterfn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="segment one raster into a .npy mask")
    p.add_argument("input", help="any raster rasterio can open (GeoTIFF, COG, ...)")
    p.add_argument("-o", "--out", help="output .npy (default: the input with .npy)")
    p.add_argument("--output", choices=OUTPUT_MODES, help="what to write (default: mask)")
    p.add_argument("--outputs", help="npy, cog, stac: comma list (default: OUTPUTS or npy)")
    p.add_argument("--model", help="model card JSON (default: the demo card, or MODEL_CARD)")
    p.add_argument("--engine", choices=ENGINES, help="default: ENGINE or auto (openvino when installed)")
    p.add_argument(
        "--precision",
        choices=PRECISION_SETTINGS,
        help="default: PRECISION or auto (the fastest native precision the card verified; int8: openvino only)",
    )
    p.add_argument("--device", choices=DEVICES, help="default: DEVICE or cpu (cuda: torch only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("export", help="export a card's checkpoint to the serving engine's fp32 and int8 graphs")
    p.add_argument("--model", help="model card JSON (default: the demo card, or MODEL_CARD)")
    p.add_argument("--out-dir", help="write a copy of the card, checkpoint and graphs here (default: in place)")
    p.add_argument("--calibrate", help="calibrate int8 on the GeoTIFFs in this directory (default: the card's)")
    p.add_argument(
        "--verify-precision",
        choices=("bf16",),
        help="only measure the exported fp32 graph at bf16 against torch and record it in the card (native bf16)",
    )

    p = sub.add_parser("replay", help="run the Lambda handler in-process on a saved event")
    p.add_argument("event", help="event JSON file (see events/)")
    p.add_argument("--endpoint-url", help="S3/SQS endpoint (MinIO, moto); default: AWS_ENDPOINT_URL or AWS")
    p.add_argument("--seed", action="store_true", help="first upload data/test-1.tif under the event's keys")
    p.add_argument("--outputs", help="npy, cog, stac: comma list (default: OUTPUTS or npy)")

    p = sub.add_parser("demo", help="embedded S3 + SQS + Lambda loop: upload, wait for the .npy, summarise")
    p.add_argument("files", nargs="*", help="extra rasters to upload besides data/test-1.tif")
    p.add_argument("--serve", action="store_true", help="keep the stack running for your own uploads")
    p.add_argument("--outputs", help="npy, cog, stac: comma list (default: OUTPUTS or npy)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for all outputs")
    p.add_argument("--workers", type=int, default=0, help="N > 0: one generated scene sharded over N workers")
    p.add_argument("--scene-size", type=int, default=2560, help="with --workers: the scene's side in pixels")
    p.add_argument("--max-pixels", type=int, default=None, help="with --workers: MAX_PIXELS (3/4 of the scene)")
    p.add_argument("--max-shards", type=int, default=None, help="with --workers: FANOUT_MAX_SHARDS (2 x N)")

    p = sub.add_parser(
        "tf-local", help="terraform apply infra/terraform onto embedded moto, one upload through it, destroy"
    )
    p.add_argument(
        "--plugin-mirror", help="filesystem mirror holding hashicorp/aws (default: /opt/tf-plugins if present)"
    )
    p.add_argument("--terraform", help="terraform executable (default: terraform on PATH)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the .npy")

    p = sub.add_parser("status", help="progress of a sharded job: shards done / total, ETA, failures")
    p.add_argument("uri", help="the input, s3://bucket/key")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, moto); default: AWS_ENDPOINT_URL or AWS")

    p = sub.add_parser("serve", help="run the Knative function locally (func-python's server)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--allowed-buckets", help="ALLOWED_BUCKETS for this server (default: none unless set)")
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="POST / without a token (default: WEBHOOK_TOKEN, or a random token printed at start)",
    )

    p = sub.add_parser("relay", help="Knative Eventing: MinIO webhooks -> the Broker -> the function")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)

    p = sub.add_parser("train-demo", help="train the demo weights on synthetic Sentinel-2-like scenes")
    p.add_argument("--out-dir", default=None, help="where demo.pt and demo.json go (default: model/weights)")
    p.add_argument("--minutes", type=float, default=None, help="training time budget")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except RasterfnError as exc:
        print(f"rasterfn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    # Imports are local so `rasterfn --help` and light commands do not pay for torch and boto3 (seconds).
    if args.command == "predict":
        from handler.commands.predict import run_predict

        return run_predict(args)
    if args.command == "status":
        from handler.commands.status import run_status

        return run_status(args)
    if args.command == "serve":
        from handler.knative import run_serve

        return run_serve(args)
    if args.command == "relay":
        from handler.http.relay import run_relay

        return run_relay(args.host, args.port)
    if missing := _missing_local_modules(LOCAL_COMMANDS[args.command]):
        print(f"rasterfn {args.command}: needs {', '.join(missing)}: {LOCAL_TOOLS_MISSING}", file=sys.stderr)
        return 2
    if args.command == "replay":
        from handler.local.replay import run_replay

        return run_replay(args)
    if args.command == "demo" and args.workers > 0:
        from handler.local.fanout_demo import run_fanout_demo

        return run_fanout_demo(args)
    if args.command == "demo":
        from handler.local.demo import run_demo

        return run_demo(args)
    if args.command == "tf-local":
        from handler.local.tf_local import run_tf_local

        return run_tf_local(args)
    if args.command == "export":
        from model.training.export import run_export

        return run_export(args)
    if args.command == "train-demo":
        from model.training.train_demo import run_train_demo

        return run_train_demo(args)
    raise AssertionError(args.command)


def _missing_local_modules(modules: Sequence[str]) -> list[str]:
    return [name for name in modules if importlib.util.find_spec(name) is None]


if __name__ == "__main__":
    sys.exit(main())
