"""What the predictor can be asked for: the choices and their defaults, shared with ``handler.settings``.

Kept apart from :mod:`model.predictor.predict` so the settings can validate against the same values without
importing torch.

Example:
    >>> PredictOptions(output="mask-uint8").precision
    'fp32'
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model.io.decode_limits import DecodeLimits

OUTPUT_DTYPES = {"mask": "float32", "mask-uint8": "uint8", "score": "float32"}
OUTPUT_MODES = tuple(OUTPUT_DTYPES)
# What is written beside the input (OUTPUTS): the .npy (the old service's contract), a Cloud Optimized GeoTIFF of
# the mask (or scores) with a PNG quicklook, and a STAC Item describing them.
OUTPUT_FORMATS = ("npy", "cog", "stac")
DEFAULT_OUTPUT_FORMATS = ("npy",)
PRECISIONS = ("fp32", "bf16", "int8")
# What PRECISION may say: a precision, or auto, which the runtime resolves once at start-up to the fastest
# precision this CPU runs natively that the card verified (model.network.engines.precision).
PRECISION_SETTINGS = ("auto", *PRECISIONS)
DEFAULT_PRECISION_SETTING = "auto"
DEVICES = ("cpu", "auto", "cuda")
# auto: the serving engine (openvino) when it is installed and the card has exported graphs, else torch.
ENGINES = ("auto", "torch", "openvino")
SERVING_ENGINE = "openvino"
DEFAULT_MAX_PIXELS = 150_000_000  # a full Sentinel-2 tile is 10980 x 10980 = 120.6 M pixels


@dataclass(frozen=True)
class PredictOptions:
    output: str = "mask"  # mask | mask-uint8 | score
    precision: str = "fp32"  # fp32 | bf16 | int8 (int8: the serving engine only) | auto (what the model was loaded at)
    device: str = "cpu"  # cpu | auto | cuda
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile_size: int | None = None  # None: the card's
    tile_overlap: int | None = None
    progress: bool = False
    fit_tiles: bool = True  # the tile grid fitted per raster (model.predictor.tiling.fit_tile); False: the card's
    decode_once: bool | None = None  # keep pass 1's samples for pass 2: None where it pays; True/False: always/never
    copy_memory_bytes: int | None = None  # what that copy may take in memory; None: model.predictor.decoded's budget
    predictions_at_once: int = 1  # on this machine (Knative's workers): they share that budget
    read_ahead: bool | None = None  # pass 2 reads the decoded copy's next strip meanwhile; None: with > 2 CPUs
    limits: DecodeLimits = field(default_factory=DecodeLimits)
