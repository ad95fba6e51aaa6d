"""Fuzz the input readers for a bounded time (``make fuzz``; not part of ``make test``).

Each target feeds generated or mutated input to a reader for ``--seconds`` and holds it to its
contract: it returns a well-formed result or raises :class:`DataError`. Any other exception, an
example that runs longer than ``--hang-seconds`` or one that needs more than ``--max-memory-mb``
is a failure: its (shrunk) input is saved under ``--failures`` and the run exits with status 1.

Targets: ``dicom`` (mutated and generated DICOM files -> read_dicom / read_dicom_header),
``raster`` (mutated PNG/JPEG -> read_image), ``master``, ``gaze`` and ``boxes`` (generated CSV
text -> the EGD-CXR table readers) and ``transcript`` (generated JSON -> read_transcript).

    python -m tests.fuzz.fuzz_readers --seconds 60 [--targets dicom master]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import resource
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from model_lib.data import dicom_io, egd_cxr, schema
from model_lib.data.errors import DataError
from tests.hostile import build_corpus

BATCH = 25
"""Examples per hypothesis run; the clock is checked between runs."""
ALLOWED = (DataError,)
"""The readers' documented error type: every refusal must be one."""


class Hang(BaseException):
    """An example outran --hang-seconds (BaseException: the readers' ``except Exception``
    clauses must not turn it into a DataError)."""


@dataclass
class Target:
    name: str
    suffix: str
    strategy: st.SearchStrategy[bytes]
    check: Callable[[Path], None]
    examples: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)
    seen_errors: set[str] = field(default_factory=set)


# --- inputs -----------------------------------------------------------------------------------

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with a few byte-level edits: flips, overwrites with boundary integers (length and
    size fields), insertions, deletions and truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        op = draw(st.sampled_from(("flip", "int16", "int32", "insert", "delete", "truncate")))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op in ("int16", "int32"):
            size = 2 if op == "int16" else 4
            value = draw(st.sampled_from(_INTERESTING)) & (256**size - 1)
            data[pos : pos + size] = value.to_bytes(size, draw(st.sampled_from(("little", "big"))))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def _dicom_seeds() -> list[bytes]:
    d = build_corpus.dicom
    eight = d(BitsAllocated=8, BitsStored=8, HighBit=7, PixelData=bytes(range(48)))
    return [
        build_corpus.to_bytes(ds)
        for ds in (
            d(),
            d(WindowCenter="2000", WindowWidth="3000", RescaleSlope="1", RescaleIntercept="0"),
            d(
                PhotometricInterpretation="MONOCHROME1",
                WindowCenter=["100", "200"],
                WindowWidth=["50", "60"],
                PixelSpacing=["0.139", "0.139"],
            ),
            d(PixelRepresentation=1, RescaleSlope="-2", RescaleIntercept="100"),
            eight,
        )
    ]


_DS_TEXT = st.one_of(
    st.sampled_from(["", "NaN", "inf", "-inf", "1e999", "-0", "40\\400", "abc", "1e-320", " 5 "]),
    st.floats(allow_nan=True).map(repr),
    st.text(max_size=20),
)


@st.composite
def generated_dicom(draw: st.DrawFn) -> bytes:
    """A DICOM whose image-module values are drawn, including wrong VRs and invalid text."""
    rows, cols = draw(st.integers(-2, 70000)), draw(st.integers(-2, 70000))
    ds = build_corpus.dicom(
        BitsAllocated=draw(st.sampled_from((0, 1, 8, 12, 16, 32, 64))),
        BitsStored=draw(st.integers(0, 70)),
        PixelRepresentation=draw(st.integers(0, 2)),
        SamplesPerPixel=draw(st.sampled_from((0, 1, 3, 4))),
        PhotometricInterpretation=draw(
            st.sampled_from(("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "", "PALETTE COLOR"))
        ),
    )
    for tag, vr, value in (
        (0x00280010, draw(st.sampled_from(("US", "SS", "UL", "LO", "DS"))), rows),
        (0x00280011, draw(st.sampled_from(("US", "SS", "IS"))), cols),
    ):
        if vr in ("US", "SS", "UL"):
            fmt = {"US": "<H", "SS": "<h", "UL": "<I"}[vr]
            lo, hi = {"US": (0, 0xFFFF), "SS": (-0x8000, 0x7FFF), "UL": (0, 0xFFFFFFFF)}[vr]
            raw = np.array(min(max(value, lo), hi)).astype(fmt).tobytes()
        else:
            raw = str(value).encode()
        build_corpus.raw_element(ds, tag, vr, raw)
    for tag in (0x00281050, 0x00281051, 0x00281052, 0x00281053, 0x00280008, 0x00280030):
        if draw(st.booleans()):
            text = draw(_DS_TEXT).encode("utf-8", "surrogatepass")[:64]
            build_corpus.raw_element(ds, tag, draw(st.sampled_from(("DS", "IS", "LO"))), text)
    ds.PixelData = (
        draw(st.binary(max_size=512))
        if draw(st.booleans())
        else bytes(max(0, min(rows, 64)) * max(0, min(cols, 64)) * 2)
    )
    ds["PixelData"].VR = "OW"
    return build_corpus.to_bytes(ds)


def _check_dicom(path: Path) -> None:
    dicom_io.read_dicom_header(path)
    image = dicom_io.read_dicom(path)
    _check_image(image)


def _check_image(image: dicom_io.DicomImage) -> None:
    pixels = image.pixels
    assert pixels.dtype == np.float32 and pixels.shape == image.native_hw, pixels.shape
    assert min(pixels.shape) > 0 and max(pixels.shape) <= dicom_io.MAX_SIDE
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0


def _check_raster(path: Path) -> None:
    _check_image(dicom_io.read_image(path))


def _raster_seeds() -> list[bytes]:
    return [build_corpus.png(16, 16), build_corpus.png(5, 3), build_corpus._JPEG]


# fmt: off
_NASTY_CELLS = st.sampled_from(
    ["", "nan", "NaN", "inf", "-inf", "1e999", "9" * 30, "-1", "0", "1.5", "../x", "/", "..",
     "\\", "\x00", '"', '""', "\n", "\r\n", ",", ";", "\t", "\ufeff", "\ud800", "１２", "a" * 300,
     " 1 ", "0x10", "1_000", "True", "None", "NULL"]
)
# fmt: on
_CELL = st.one_of(
    _NASTY_CELLS,
    st.text(max_size=12),
    st.floats().map(repr),
    st.integers(-(2**70), 2**70).map(str),
)


@st.composite
def csv_table(draw: st.DrawFn, seed: list[list[str]]) -> bytes:
    """A seed table with drawn cells, rows, columns, quoting, delimiter, line ends, encoding
    and, sometimes, a byte-level mutation on top."""
    rows = [list(r) for r in seed]
    width = len(rows[0])
    for _ in range(draw(st.integers(0, 4))):
        r, k = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, width - 1))
        if k < len(rows[r]):
            rows[r][k] = draw(_CELL)
    op = draw(st.sampled_from(("none", "none", "drop_row", "dup_row", "drop_col", "add_col",
                               "short_row", "long_row", "header_only")))  # fmt: skip
    if op == "drop_row" and len(rows) > 1:
        del rows[draw(st.integers(1, len(rows) - 1))]
    elif op == "dup_row" and len(rows) > 1:
        rows.append(list(rows[draw(st.integers(1, len(rows) - 1))]))
    elif op == "drop_col":
        k = draw(st.integers(0, width - 1))
        rows = [r[:k] + r[k + 1 :] for r in rows]
    elif op == "add_col":
        rows = [[*r, draw(_CELL)] for r in rows]
    elif op == "short_row" and len(rows) > 1:
        rows[-1] = rows[-1][: draw(st.integers(0, width - 1))]
    elif op == "long_row" and len(rows) > 1:
        rows[-1] = [*rows[-1], draw(_CELL)]
    elif op == "header_only":
        rows = rows[:1]
    buffer = io.StringIO()
    quoting = draw(st.sampled_from((csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC)))
    writer = csv.writer(
        buffer,
        delimiter=draw(st.sampled_from((*",,,,,,", ";", "\t"))),
        quoting=quoting,
        lineterminator=draw(st.sampled_from(("\n", "\r\n"))),
    )
    for row in rows:
        writer.writerow(row)
    encoding = draw(st.sampled_from(("utf-8",) * 6 + ("utf-8-sig", "utf-16", "latin-1")))
    data = buffer.getvalue().encode(encoding, "surrogatepass" if "utf-8" in encoding else "replace")
    if draw(st.integers(0, 7)) == 0:
        data = draw(mutated([data]))
    return data


def _check_table(read: Callable[[Path], pd.DataFrame], columns: tuple[str, ...]) -> Callable:
    def check(path: Path) -> None:
        df = read(path)
        assert tuple(df.columns) == columns and len(df) > 0
        assert df.index[0] == 1 and df.index.is_monotonic_increasing
        numbers = df.select_dtypes("number")
        assert np.isfinite(numbers.to_numpy(dtype="float64", na_value=0.0)).all()
        for col in ("dicom_id", "DICOM_ID"):
            for name in df.get(col, pd.Series(dtype=object)).dropna().unique():
                assert egd_cxr._name_problem(str(name)) is None, name

    return check


_JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10))
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def transcript_json(draw: st.DrawFn) -> bytes:
    """Mostly transcript-shaped objects with drawn values, sometimes any JSON or deep nesting."""
    kind = draw(st.sampled_from(("shaped", "shaped", "any", "deep", "bytes")))
    if kind == "deep":
        depth = draw(st.integers(100, 5000))
        return ('{"full_text": ' + "[" * depth + "]" * depth + "}").encode()
    if kind == "any":
        return json.dumps(draw(_JSON)).encode()
    phrase = st.fixed_dictionaries(
        {"phrase": _JSON_SCALAR, "begin_time": _JSON_SCALAR, "end_time": _JSON_SCALAR}
    )
    phrases = draw(st.lists(phrase, max_size=3))
    data = {"full_text": draw(_JSON_SCALAR), "time_stamped_text": phrases}
    text = json.dumps(data).encode("utf-8", "surrogatepass")
    return draw(mutated([text])) if kind == "bytes" else text


def _check_transcript(path: Path) -> None:
    data = egd_cxr.read_transcript(path)
    assert isinstance(data["full_text"], str)
    for item in data["time_stamped_text"]:
        assert all(math.isfinite(item[t]) for t in ("begin_time", "end_time"))


# --- running ----------------------------------------------------------------------------------


def build_targets(release: Path) -> dict[str, Target]:
    egd = release / "egd-cxr"
    master = build_corpus.read_rows(egd / "master_sheet.csv")[:4]
    gaze = build_corpus.read_rows(egd / "fixations.csv")[:5]
    boxes = build_corpus.read_rows(egd / "bounding_boxes.csv")[:4]
    return {
        "dicom": Target(
            "dicom", ".dcm", st.one_of(mutated(_dicom_seeds()), generated_dicom()), _check_dicom
        ),
        "raster": Target("raster", ".png", mutated(_raster_seeds()), _check_raster),
        "master": Target(
            "master",
            ".csv",
            csv_table(master),
            _check_table(egd_cxr.read_master_sheet, schema.MASTER_SHEET_COLUMNS),
        ),
        "gaze": Target(
            "gaze",
            ".csv",
            csv_table(gaze),
            _check_table(egd_cxr.read_gaze_table, schema.GAZE_COLUMNS),
        ),
        "boxes": Target(
            "boxes",
            ".csv",
            csv_table(boxes),
            _check_table(egd_cxr.read_bounding_boxes, schema.BBOX_COLUMNS),
        ),
        "transcript": Target("transcript", ".json", transcript_json(), _check_transcript),
    }


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang


def _signature(err: BaseException) -> str:
    """Exception type and where it was raised: one per distinct failure."""
    if isinstance(err, Hang):
        return "hang: the example outran --hang-seconds"
    origin = traceback.extract_tb(err.__traceback__)[-1]
    return f"{type(err).__name__} at {Path(origin.filename).name}:{origin.lineno}"


def fuzz(target: Target, seconds: float, hang_s: float, work: Path, failures: Path) -> None:
    """Run ``target`` for ``seconds``, or until hypothesis has found and shrunk failures; save
    the smallest input of each distinct failure under ``failures``."""
    found: dict[str, tuple[str, bytes]] = {}

    def one(data: bytes) -> None:
        target.examples += 1
        # The raster reader dispatches on the suffix: JPEG bytes go in a .jpg.
        suffix = ".jpg" if data.startswith(b"\xff\xd8") else target.suffix
        current = work / f"input{suffix}"
        current.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, hang_s)
        try:
            target.check(current)
        except ALLOWED as err:
            target.refused += 1
            target.seen_errors.add(str(err.message).split(":")[0][:40])
        except BaseException as err:
            # Shrinking replays the smallest input last: it is the one kept.
            found[_signature(err)] = (" ".join(str(err).split())[:200], data)
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    run = settings(
        max_examples=BATCH,
        deadline=None,
        database=None,
        derandomize=False,
        print_blob=False,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )(given(target.strategy)(one))
    end = time.monotonic() + seconds
    while time.monotonic() < end and not found:
        try:
            run()
        except (Exception, Hang) as err:  # the reader's failures were recorded in ``found``
            if not found:  # the harness itself failed: report that
                found[f"harness: {_signature(err)}"] = (str(err)[:200], b"")
    for k, (signature, (message, data)) in enumerate(sorted(found.items()), start=1):
        failures.mkdir(parents=True, exist_ok=True)
        saved = failures / f"{target.name}-{k}{target.suffix}"
        saved.write_bytes(data)
        target.failures.append(f"{signature}: {message} (input: {saved})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="per target")
    parser.add_argument("--targets", nargs="*", default=None, help="default: all")
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    # Address space, not resident memory: PIL asks for a 4 GiB read buffer (never touched) on a
    # PNG whose chunk length is 0xFFFFFFFF, so the limit stays above that.
    parser.add_argument("--max-memory-mb", type=int, default=8192)
    parser.add_argument(
        "--failures", type=Path, default=Path(tempfile.gettempdir()) / "cxr-gaze-fuzz-failures"
    )
    args = parser.parse_args(argv)

    # pydicom warns about every malformed value; the refusals are counted instead.
    warnings.simplefilter("ignore")
    limit = args.max_memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-fuzz-") as tmp:
        from model_lib.data.synth import generate_dataset

        set_hypothesis_home_dir(Path(tmp) / "hypothesis")  # its caches stay out of the repo

        release = Path(tmp) / "release"
        generate_dataset(release, n_images=3, seed=1, scale=0.05)
        targets = build_targets(release)
        names = args.targets or list(targets)
        unknown = sorted(set(names) - set(targets))
        if unknown:
            parser.error(f"unknown targets {unknown}; choose from {sorted(targets)}")
        work = Path(tmp) / "work"
        work.mkdir()
        for name in names:
            started = time.monotonic()
            fuzz(targets[name], args.seconds, args.hang_seconds, work, args.failures)
            t = targets[name]
            verdict = "ok" if not t.failures else f"FAILED ({len(t.failures)})"
            print(f"{name:<11} {t.examples:>7,} examples, {t.refused:>7,} refused with DataError "
                  f"({len(t.seen_errors)} kinds), {time.monotonic() - started:5.1f} s: {verdict}",
                  flush=True)  # fmt: skip
            for line in t.failures:
                print(f"    {line}", flush=True)
    failed = [n for n in names if targets[n].failures]
    print(f"fuzz: {len(names) - len(failed)} of {len(names)} targets held their contract")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
