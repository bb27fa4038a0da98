"""Fuzz target: the whole pre-pixel path (:func:`model.io.raster.inspect`) on mutated real and generated TIFFs.

Signature, header, sample types, layout and decode cost: every input must pass or be refused with one of our
:class:`~model.errors.InputError` refusals, one line each. Anything else (numpy's TypeError, rasterio's own
errors, an IndexError) is a bug; hypothesis shrinks it and it is kept below as a regression test.

``make test`` runs a bounded smoke run (:data:`SMOKE_EXAMPLES` inputs, a few seconds); ``make fuzz`` runs
:func:`test_fuzz_for_a_while` for ``FUZZ_SECONDS`` and prints how many inputs it ran.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from model.errors import InputError
from model.io.decode_limits import DecodeLimits
from model.io.raster import inspect
from tests.fixtures.hostile_tiffs import (
    BITS_PER_SAMPLE,
    DEFLATE,
    DOUBLE,
    GEO_KEY_DIRECTORY,
    LERC,
    LZW,
    MODEL_PIXEL_SCALE,
    NONE,
    PACKBITS,
    PHOTOMETRIC,
    SAMPLE_FORMAT,
    SHORT,
    ZSTD,
    write_tiff,
)
from tests.fixtures.paths import REPO_ROOT

REAL = (REPO_ROOT / "data" / "test-1.tif").read_bytes()
REAL_IFD = struct.unpack("<I", REAL[4:8])[0]  # GDAL wrote the directory after the tiles: mutate it, not pixels
SMOKE_EXAMPLES = 120
FUZZ_BATCH = 500
BAND_SETS = ((1,), tuple(range(1, 11)))  # a one-band card reaches the type checks with any file
INTERESTING_WORDS = (0, 1, 2, 7, 0xFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF)
MAX_PIXELS = 150_000_000
MAX_BLOCKS = 4096  # per generated file: a million offsets take seconds to write and to read
INPUTS = {"count": 0}


@st.composite
def generated_tiffs(draw) -> bytes:
    """A small TIFF from the hostile-TIFF writer: any size, type, blocks, codec, and odd tag values."""
    width, height = draw(st.sampled_from((1, 7, 64, 513, 70_000))), draw(st.sampled_from((1, 16, 300, 2**20)))
    bands = draw(st.integers(1, 12))
    dtype = draw(st.sampled_from(("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32")))
    tile = draw(st.none() | st.tuples(st.sampled_from((16, 256, 2**16)), st.sampled_from((16, 256, 2**16))))
    rows_per_strip = draw(st.none() | st.sampled_from((1, 8, 2**31)))
    if _blocks(width, height, tile, rows_per_strip) > MAX_BLOCKS:
        tile, rows_per_strip = (2**16, 2**16), None  # the same header claims, in few blocks: fast to write and read
    tags: dict[int, tuple[int, list[float]]] = {}
    if draw(st.booleans()):
        tags[SAMPLE_FORMAT] = (SHORT, [draw(st.integers(0, 8))] * bands)
        tags[BITS_PER_SAMPLE] = (SHORT, [draw(st.sampled_from((1, 2, 4, 12, 16, 24, 32, 64, 128)))] * bands)
    if draw(st.booleans()):
        tags[PHOTOMETRIC] = (SHORT, [draw(st.integers(0, 10))])
    if draw(st.booleans()):
        tags[MODEL_PIXEL_SCALE] = (DOUBLE, [draw(st.floats(allow_nan=True, allow_infinity=True))] * 3)
        keys = draw(st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=16))
        tags[GEO_KEY_DIRECTORY] = (SHORT, [1, 1, 0, len(keys) // 4, *keys])
    path = write_tiff(
        _scratch() / "generated.tif",
        width,
        height,
        bands=bands,
        dtype=dtype,
        tile=tile,
        rows_per_strip=rows_per_strip,
        planar=draw(st.booleans()),
        compression=draw(st.sampled_from((NONE, LZW, DEFLATE, PACKBITS, ZSTD, LERC, 7, 99))),
        blocks=lambda i: b"\x00" * 16,
        tags=tags,
    )
    return path.read_bytes()


def _blocks(width: int, height: int, tile: tuple[int, int] | None, rows_per_strip: int | None) -> int:
    if tile is not None:
        return -(-width // tile[0]) * -(-height // tile[1])
    return -(-height // min(rows_per_strip or height, height))


class Case:
    """One fuzz input: the mutated bytes, shown as the seed and the mutations (the real seed is 3.5 MB)."""

    def __init__(self, seed: str, data: bytes, mutations: tuple, base: bytes | None = None) -> None:
        self.seed, self.data, self.mutations = seed, data, mutations
        self.base = base  # a generated seed, shown: a few kB rebuild the input exactly

    def __repr__(self) -> str:
        base = "" if self.base is None else f", base={self.base!r}"
        return f"Case({self.seed!r}, mutations={self.mutations!r}{base})"


@st.composite
def mutated(draw, seeds: st.SearchStrategy[tuple[str, bytes, tuple[int, int]]]) -> Case:
    """A seed with a few byte-level mutations: overwritten bytes and words, flipped bits, cuts, insertions."""
    name, data, (start, end) = draw(seeds)
    out = bytearray(data)
    done = []
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(start, max(start, min(end, len(out)) - 1)))
        kind = draw(st.sampled_from(tuple(MUTATION_VALUES)))
        value = draw(MUTATION_VALUES[kind])
        mutate(out, kind, at, value)
        done.append((kind, at, value))
    return Case(name, bytes(out), tuple(done), base=None if name == "real" else data)


MUTATION_VALUES: dict[str, st.SearchStrategy] = {
    "byte": st.integers(0, 255),
    "bit": st.integers(0, 7),
    "word": st.sampled_from(INTERESTING_WORDS),
    "insert": st.binary(min_size=1, max_size=16),
    "delete": st.integers(1, 16),
    "truncate": st.none(),
}


def mutate(out: bytearray, kind: str, at: int, value: object) -> None:
    """Apply one mutation in place (what :class:`Case` shows, so a found input can be rebuilt exactly)."""
    if kind == "byte":
        out[at : at + 1] = bytes([value])
    elif kind == "bit":
        out[at : at + 1] = bytes([(out[at] if at < len(out) else 0) ^ (1 << value)])
    elif kind == "word":
        out[at : at + 4] = struct.pack("<I", value)
    elif kind == "insert":
        out[at:at] = value
    elif kind == "delete":
        del out[at : at + value]
    else:
        del out[at:]


def rebuilt(seed: bytes, *mutations: tuple[str, int, object]) -> bytes:
    out = bytearray(seed)
    for kind, at, value in mutations:
        mutate(out, kind, at, value)
    return bytes(out)


_REAL_HEADER = st.sampled_from((("real", REAL, (0, 16)), ("real", REAL, (REAL_IFD, len(REAL)))))
_GENERATED = generated_tiffs().map(lambda data: ("generated", data, (0, len(data))))
_RAW = st.one_of(
    st.sampled_from((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")).flatmap(
        lambda magic: st.binary(max_size=256).map(lambda rest: magic + rest)
    ),
    st.binary(max_size=64),
)
TIFF_CASES = st.one_of(mutated(_REAL_HEADER), mutated(_GENERATED), _RAW.map(lambda data: Case("raw", data, (), data)))


def inspect_or_refuse(data: bytes, bands: tuple[int, ...]) -> None:
    """The property: the pre-pixel path answers a header or one of our refusals, never anything else."""
    INPUTS["count"] += 1
    path = _scratch() / "input.tif"
    path.write_bytes(data)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            inspect(path, bands, MAX_PIXELS, DecodeLimits())
    except InputError as exc:
        assert "\n" not in str(exc), "a refusal is one line"
    # Nothing on stderr either: the CLI's refusal is its only line (GDAL's text belongs in the debug log).
    assert printed.getvalue() == ""


def _fuzz(examples: int):
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    @given(TIFF_CASES, st.sampled_from(BAND_SETS))
    def run(case: Case, bands: tuple[int, ...]) -> None:
        inspect_or_refuse(case.data, bands)

    return run


def test_fuzz_smoke():
    _fuzz(SMOKE_EXAMPLES)()


@pytest.mark.long_fuzz
def test_fuzz_for_a_while():
    seconds = float(os.environ.get("FUZZ_SECONDS", "600"))
    started = time.monotonic()
    INPUTS["count"] = 0
    while time.monotonic() - started < seconds:
        _fuzz(FUZZ_BATCH)()
    elapsed = time.monotonic() - started
    print(f"\nfuzz: {INPUTS['count']} inputs in {elapsed:.0f} s, no exception but refusals")


# --- what the fuzzer found, kept


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(REAL[:REAL_IFD], id="real-without-its-directory"),
        # colorinterp raised GDAL's CPLE_AppDefinedError (no RasterioError) past a directory cut to 13 entries
        pytest.param(rebuilt(REAL, ("byte", REAL_IFD, 13)), id="real-directory-entry-count-cut"),
    ],
)
@pytest.mark.parametrize("bands", BAND_SETS)
def test_found_inputs_are_refused(data, bands):
    path = _scratch() / "found.tif"
    path.write_bytes(data)
    with pytest.raises(InputError):
        inspect(path, bands, MAX_PIXELS, DecodeLimits())


def test_a_gdal_message_that_is_not_utf8_prints_nothing():
    # A tag value's bytes quoted in a libtiff warning: rasterio failed to decode it in its C callback, and
    # Python printed a UnicodeDecodeError and a traceback on stderr (the header itself is accepted).
    found = rebuilt(REAL, ("bit", 3551432, 1), ("word", 3551432, 2**31 - 1), ("insert", 3550956, b"\xd0\xe4\xf0"))
    inspect_or_refuse(found, BAND_SETS[1])


@pytest.fixture(autouse=True, scope="module")
def scratch_dir(tmp_path_factory):
    """One directory for the module: hypothesis examples cannot take pytest's per-test ``tmp_path``."""
    SCRATCH[:] = [tmp_path_factory.mktemp("fuzz")]
    yield
    SCRATCH.clear()


SCRATCH: list[Path] = []


def _scratch() -> Path:
    return SCRATCH[0]
