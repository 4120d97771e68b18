"""The fault suite of issue 23 (reliability, round 3), first half: memory and time bounded by the input's
real size, and no corrupt image in a release (nor a valid one refused).

Each test asserts what a user sees: the exit code or the exclusion, a message that names the input and
the fix, and what is on disk afterwards. Hostile inputs are made small on disk (a million identical
parquet rows in 440 KB, a gigabyte of zeros deflated to a megabyte, a 16000x16000 frame header over a
64x64 JPEG); tests that measure a child's peak memory or build the large forms are marked ``slow``.
Memory and time figures themselves live in benchmarks/ (verify_memory.py), never here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from covid19_cxr_dataset import download, records
from covid19_cxr_dataset import release as release_format
from covid19_cxr_dataset.cli import main
from covid19_cxr_dataset.convert import ConvertSettings, convert_bytes, convert_file
from covid19_cxr_dataset.convert.integrity import JPEG_END_MARKER_ADDED, PNG_END_CHUNK_MISSING
from covid19_cxr_dataset.convert.settings import MAX_JPEG_SCANS
from covid19_cxr_dataset.errors import ConversionError, DownloadError
from covid19_cxr_dataset.verify import verify_release

from dicom_factory import deflated_with_hidden_element, encapsulate_frame, make_dataset, to_bytes, with_frame_size
from loopback import LoopbackServer
from release_factory import add_tiny_rows_shard, make_release
from synthetic import COHEN, EXPECTED, git_blob_sha1

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str):
    """Run the CLI in-process; a raw traceback (any exception but SystemExit) fails the test."""
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"raw traceback instead of an error message: {result.exception!r}\n{result.output}"
    )
    return result


def tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


_REPORT_PEAK = (
    "import resource\n"
    "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')] if sys.platform == 'linux' else []\n"
    "print(f'PEAK_RSS_KIB={peak[0] if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)"
)
"""The child's own peak RSS: Linux's VmHWM belongs to the process image, where ru_maxrss would keep the
high-water mark of the parent it was forked from."""


def child_peak_rss_mib(code: str, *args: str, timeout: float = 300) -> tuple[float, str]:
    """Run ``code`` in a fresh interpreter; (its own peak RSS in MiB, its output). The child reports its
    peak (``_REPORT_PEAK``) as it exits, whatever way it exits."""
    wrapped = "import sys\ntry:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + "finally:\n" + "".join(
        f"    {line}\n" for line in _REPORT_PEAK.splitlines())
    child = subprocess.run([sys.executable, "-c", wrapped, *args], capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
    peak = [line for line in child.stderr.splitlines() if line.startswith("PEAK_RSS_KIB=")]
    assert peak, child.stderr[-2000:]
    return int(peak[-1].split("=")[1]) / 1024, child.stdout + child.stderr


# ---- 1. verify: memory bounded whatever the row count ------------------------------------------------


@pytest.fixture(scope="module")
def small_release(tmp_path_factory) -> Path:
    return make_release(tmp_path_factory.mktemp("small") / "release", per_class={"train": 4, "test": 2}, size=(48, 48))


@pytest.fixture
def release(small_release, tmp_path) -> Path:
    return Path(shutil.copytree(small_release, tmp_path / "release"))


def test_verify_reads_no_shard_of_a_million_tiny_rows(release):
    shard = add_tiny_rows_shard(release, 1_000_000)
    assert shard.stat().st_size < 1_000_000  # under a megabyte on disk; about 2 GB once decoded
    before = tree(release)
    started = time.monotonic()
    result = cli("verify", str(release))
    assert result.exit_code == 1
    assert "data/train-00001-of-00002.parquet: shard-extra" in result.output and "remove it" in result.output
    assert "data/train-00001-of-00002.parquet: shard-rows" in result.output
    assert "1,000,000 rows in its parquet footer" in result.output and "(not read" in result.output
    assert "Rebuild the release" in result.output
    assert time.monotonic() - started < 60  # never decoded (it took minutes and 1.7 GB before)
    assert tree(release) == before


def test_verify_refuses_a_listed_shard_whose_rows_disagree_with_the_report_before_decoding(release):
    """Someone who also rewrote the report (the shard listed with its sha256, the counts claiming its rows)
    gains nothing: the rows cannot fit the shard's bytes, so it is not read."""
    shard = add_tiny_rows_shard(release, 1_000_000)
    relpath = shard.relative_to(release).as_posix()
    report = json.loads((release / "build_report.json").read_text())
    report["shards"][relpath] = {"sha256": download.file_sha256(shard), "bytes": shard.stat().st_size}
    report["counts"]["train"]["COVID-19"] += 1_000_000
    (release / "build_report.json").write_text(json.dumps(report))
    result = verify_release(release)
    found = {(p.file, p.check) for p in result.problems}
    assert (relpath, "shard-rows") in found and (relpath, "shard-extra") not in found
    problem = next(p for p in result.problems if p.check == "shard-rows")
    assert problem.expected.startswith(f"at most {shard.stat().st_size // release_format.MIN_ROW_BYTES:,} rows")
    assert result.rows == 3 * (4 + 2)  # the other shards were read; this one was not


def test_verify_refuses_a_split_with_more_rows_than_the_report_counts(release):
    extra = release / "data" / "test-00001-of-00002.parquet"
    shutil.copy(next((release / "data").glob("test-*.parquet")), extra)  # a genuine shard, twice
    result = verify_release(release)
    problem = next(p for p in result.problems if p.check == "shard-rows")
    assert problem.expected == "6 test rows (build_report.json counts)"
    assert problem.actual == "12 rows in the parquet footers of its 2 shard(s)" and problem.hint == "not read"


@pytest.mark.slow
def test_verify_memory_stays_flat_with_five_million_tiny_rows(release, tmp_path):
    pristine = Path(shutil.copytree(release, tmp_path / "pristine"))
    add_tiny_rows_shard(release, 5_000_000)
    code = "from covid19_cxr_dataset.verify import verify_release\nprint(verify_release(sys.argv[1]).ok)"
    base, _ = child_peak_rss_mib(code, str(pristine))
    hostile, output = child_peak_rss_mib(code, str(release))
    assert "False" in output
    assert hostile < base + 150, f"peak RSS {hostile:.0f} MiB with the extra shard, {base:.0f} MiB without"


# ---- 2. DICOM: the per-image memory limit holds before decoding ------------------------------------


def _dicom_with_frame(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    from pydicom.uid import JPEGBaseline8Bit

    return to_bytes(encapsulate_frame(make_dataset(pixels), with_frame_size(buffer.getvalue(), width, height), JPEGBaseline8Bit))


def test_dicom_frame_larger_than_its_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "small-header.dcm"
    path.write_bytes(_dicom_with_frame(16000, 16000))
    with pytest.raises(ConversionError) as raised:
        convert_file(path)
    assert raised.value.reason == "dicom-undecodable"
    message = str(raised.value)
    assert str(path) in message and "64x64" in message and "16000x16000" in message and "exclude it" in message
    assert convert_bytes(_dicom_with_frame(64, 64)).width == 64  # a frame that agrees is converted


def test_deflated_dicom_hiding_data_past_the_limit_is_refused(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 4000, (64, 64), dtype=np.uint16)
    path = tmp_path / "deflated.dcm"
    path.write_bytes(deflated_with_hidden_element(make_dataset(pixels, bits_stored=12), 48 * 2**20))
    assert path.stat().st_size < 200_000
    settings = ConvertSettings(max_decode_bytes=64 * 2**20)  # inflated data capped at a quarter: 16 MiB
    with pytest.raises(ConversionError) as raised:
        convert_file(path, settings)
    assert raised.value.reason == "image-too-large"
    assert str(path) in str(raised.value) and "inflates to more than 16 MiB" in str(raised.value)
    assert "raise ConvertSettings.max_decode_bytes" in str(raised.value)
    small = tmp_path / "deflated-small.dcm"
    small.write_bytes(deflated_with_hidden_element(make_dataset(pixels, bits_stored=12), 1024))
    assert convert_file(small, settings).width == 64  # a deflated file under the cap is converted


@pytest.mark.slow
def test_dicom_bombs_stay_under_the_memory_limit(tmp_path):
    """The issue's files: a 64x64 header over a real 16000x16000 JPEG frame (1.3 GB before) and a
    deflated file hiding 1 GB in a private element (2.1 GB, and converted, before)."""
    import turbojpeg
    from pydicom.uid import JPEGBaseline8Bit

    frame = np.zeros((16000, 16000), np.uint8)
    frame[:, ::512] = 200
    big = turbojpeg.compress(frame, 90, turbojpeg.SAMP.GRAY)
    del frame
    small = make_dataset(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "frame.dcm").write_bytes(to_bytes(encapsulate_frame(small, big, JPEGBaseline8Bit)))
    (tmp_path / "deflated.dcm").write_bytes(deflated_with_hidden_element(small, 2**30))
    code = ("from covid19_cxr_dataset.convert import convert_file\nfrom covid19_cxr_dataset.errors import ConversionError\n"
            "try:\n    convert_file(sys.argv[1])\nexcept ConversionError as error:\n    print('refused', error.reason)")
    for name, reason in (("frame.dcm", "dicom-undecodable"), ("deflated.dcm", "image-too-large")):
        peak, output = child_peak_rss_mib(code, str(tmp_path / name))
        assert f"refused {reason}" in output, output
        assert peak < 400, f"{name}: peak RSS {peak:.0f} MiB"


# ---- 3. JPEG scans: capped ----------------------------------------------------------------------------


def _progressive(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = (np.add.outer(np.arange(size[1]), np.arange(size[0])) + rng.normal(0, 6, (size[1], size[0]))).clip(0, 255)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90, progressive=True)
    return buffer.getvalue()


def _scan_starts(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"]


def _with_many_scans(data: bytes, copies: int) -> bytes:
    """``data`` with its smallest scan (header and entropy-coded data) repeated ``copies`` more times."""
    bounds = _scan_starts(data) + [len(data) - 2]
    scan = min((data[a:b] for a, b in zip(bounds, bounds[1:])), key=len)
    return data[:-2] + scan * copies + b"\xff\xd9"


def test_jpeg_with_more_scans_than_the_cap_is_excluded_without_decoding():
    hostile = _with_many_scans(_progressive(), MAX_JPEG_SCANS)
    assert len(hostile) < 200_000
    for settings in (ConvertSettings(), ConvertSettings(lossless_jpeg=False)):
        with pytest.raises(ConversionError) as raised:
            convert_bytes(hostile, settings, name="many-scans.jpg")
        assert raised.value.reason == "image-too-many-scans"
        assert "many-scans.jpg" in str(raised.value) and f"more than {MAX_JPEG_SCANS:,} scans" in str(raised.value)
        assert "exclude it" in str(raised.value)
    assert "image-too-many-scans" in records.REASONS
    assert convert_bytes(_progressive()).conversion == "lossless-jpeg"  # an ordinary progressive JPEG is not


# ---- 4. plan --check-files: a deadline, and servers without HEAD ---------------------------------


def _plan_check(world, server, tmp_path, *extra: str):
    return cli("plan", "--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir",
               str(tmp_path / "cache"), "-q", "--check-files", "--missing-report", str(tmp_path / "missing.csv"), *extra)


def _image_paths(world) -> list[str]:
    return [p for p in world.served if "/images/" in p]


def test_check_files_against_a_server_that_never_answers_head_ends_at_the_deadline(world, tmp_path):
    with LoopbackServer(dict(world.served)) as server:
        for path in _image_paths(world):
            server.stall(path, 120, times=None, method="HEAD")
        started = time.monotonic()
        result = _plan_check(world, server, tmp_path, "--check-deadline", "2")
        elapsed, base = time.monotonic() - started, server.base_url
    assert result.exit_code == 1
    assert f"{base}: answered 0 of 13 file checks within the deadline of 2 s" in result.output
    assert "the others are not reported missing" in result.output and "plan --check-deadline SECONDS" in result.output
    assert elapsed < 30  # 2 s, not the 30 s timeout times 6 tries per file (394 s for 13 files before)
    assert not (tmp_path / "missing.csv").exists()


def test_check_files_deadline_default_matches_the_download_package():
    option = next(p for p in main.commands["plan"].params if p.name == "check_deadline")
    assert option.default == download.CHECK_DEADLINE


def test_check_files_falls_back_to_a_ranged_get_when_head_is_refused(world, tmp_path):
    absent = f"/{COHEN[0]}/{COHEN[1]}/images/c2.png"
    with LoopbackServer({p: d for p, d in world.served.items() if p != absent}) as server:
        for path in _image_paths(world):
            server.fail(path, 405, times=None, method="HEAD")
        result = _plan_check(world, server, tmp_path)
        gets = [r for r in server.requests if r.method == "GET" and "/images/" in r.path]
    assert result.exit_code == 2, result.output  # one file is absent: only that one is reported
    assert "files: 12 of 13 reachable" in result.output
    rows = (tmp_path / "missing.csv").read_text().splitlines()
    assert len(rows) == 2 and "images/c2.png" in rows[1] and ",404," in rows[1]
    assert gets and all(r.range == "bytes=0-0" for r in gets)  # one byte asked for each file, nothing downloaded
    assert all(r.body_bytes == 1 for r in gets if r.status == 206) and {r.status for r in gets} == {206, 404}
    assert not (tmp_path / "cache" / "github" / COHEN[0] / COHEN[1] / "images").exists()


def test_head_refused_with_501_and_a_server_ignoring_ranges_still_gives_the_size(loopback_server, tmp_path):
    data = b"x" * 5000
    loopback_server.add("/a.bin", data)
    loopback_server.fail("/a.bin", 501, times=None, method="HEAD")
    loopback_server.ignore_range("/a.bin")
    spec = download.FileSpec(url=loopback_server.url("/a.bin"), cache_key="a.bin", size=len(data))
    wrong = download.FileSpec(url=loopback_server.url("/a.bin"), cache_key="b.bin", size=10)
    answers = download.Downloader(tmp_path, retries=0, progress=False).check_reachable([spec, wrong])
    assert answers["a.bin"]["reachable"] and answers["a.bin"]["size"] == 5000
    assert not answers["b.bin"]["reachable"] and "announces 5000 bytes" in answers["b.bin"]["detail"]


def test_check_reachable_deadline_is_a_download_error_naming_the_server(loopback_server, tmp_path):
    loopback_server.add("/slow.bin", b"x")
    loopback_server.stall("/slow.bin", 60, times=None)
    spec = download.FileSpec(url=loopback_server.url("/slow.bin"), cache_key="slow.bin")
    with pytest.raises(DownloadError) as raised:
        download.Downloader(tmp_path, progress=False).check_reachable([spec], deadline=1)
    assert f"{loopback_server.base_url}: answered 0 of 1 file checks within the deadline of 1 s" in str(raised.value)


# ---- 5. FIFOs and devices: refused, never read ----------------------------------------------------


def _run_with_fifo_guard(fifos: list[Path], call, seconds: float = 60):
    """``call()`` in a thread, joined for ``seconds``; a reader blocked on one of ``fifos`` (the old
    behaviour) is released afterwards by opening the FIFO for writing, so the test fails instead of hanging."""
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("result", call()), daemon=True)
    thread.start()
    thread.join(seconds)
    finished = not thread.is_alive()
    for fifo in fifos:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # nobody is blocked on it
    assert finished, "the command blocked on a FIFO"
    return outcome["result"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_verify_names_a_fifo_shard_and_does_not_hang(release):
    fifo = release / "data" / "train-00001-of-00002.parquet"
    os.mkfifo(fifo)
    result = _run_with_fifo_guard([fifo], lambda: cli("verify", str(release)))
    assert result.exit_code == 1
    assert "data/train-00001-of-00002.parquet: shard-extra" in result.output and "a FIFO (named pipe)" in result.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("name", ["build_report.json", "README.md", "listed shard"])
def test_verify_refuses_a_fifo_in_place_of_a_release_file(release, name):
    target = next((release / "data").glob("test-*.parquet")) if name == "listed shard" else release / name
    target.unlink()
    os.mkfifo(target)
    result = _run_with_fifo_guard([target], lambda: verify_release(release))
    problem = next(p for p in result.problems if p.file == target.relative_to(release).as_posix())
    assert "a FIFO (named pipe)" in problem.actual


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_exclude_missing_refuses_what_is_not_a_regular_file(world, tmp_path, kind):
    if kind == "fifo":
        report = tmp_path / "missing.csv"
        os.mkfifo(report)
    else:
        report = Path("/dev/zero")
        if not report.exists():
            pytest.skip("no /dev/zero here")
    variant = tmp_path / "variant"
    result = _run_with_fifo_guard([report] if kind == "fifo" else [], lambda: cli(
        "new-variant", "--from", str(world.manifest_dir), str(variant), "--exclude-missing", str(report),
        "--cache-dir", str(tmp_path / "cache"), "--offline", "-q"))
    assert result.exit_code == 1
    words = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert f"{report}: the missing-files report is {words}, not a regular file" in result.output
    assert "Pass the path of the file itself" in result.output
    assert not variant.exists()


def test_missing_report_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    from covid19_cxr_dataset import missing
    from covid19_cxr_dataset.errors import NotARegularFile

    big = tmp_path / "missing.csv"
    big.write_text("source,source_path,status\n" + "cohen,images/x.jpg,404\n" * 100)
    monkeypatch.setattr(missing, "MAX_MISSING_REPORT_BYTES", 1000)
    with pytest.raises(NotARegularFile) as raised:
        missing.read_missing_report(big)
    assert f"{big}: the missing-files report is {big.stat().st_size:,} bytes, over the limit of 1,000 bytes" in str(raised.value)


# ---- 6. corrupt JPEGs refused, complete ones accepted, EXIF everywhere -------------------------------


def _film(width: int = 300, height: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 0.6 + yy * 0.4 + rng.normal(0, 8, (height, width))) % 256).astype(np.uint8)


def _jpeg(image: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def _entropy_start(data: bytes) -> int:
    start = data.index(b"\xff\xda")
    return start + 2 + struct.unpack(">H", data[start + 2 : start + 4])[0]


def _garbage_entropy(data: bytes) -> bytes:
    start = _entropy_start(data)
    noise = np.random.default_rng(7).integers(0, 255, len(data) - 2 - start, dtype=np.uint8).tobytes().replace(b"\xff", b"\xfe")
    return data[:start] + noise + b"\xff\xd9"


def _zero_entropy(data: bytes) -> bytes:
    start = _entropy_start(data)
    return data[:start] + bytes(len(data) - 2 - start) + b"\xff\xd9"


def _claims_size(data: bytes, width: int, height: int) -> bytes:
    frame = data.index(b"\xff\xc0")
    return data[: frame + 5] + struct.pack(">HH", height, width) + data[frame + 9 :]


@pytest.mark.parametrize("case", ["garbage", "zeros", "10000x10000-header"])
@pytest.mark.parametrize("lossless", [True, False], ids=["lossless-path", "decode-path"])
def test_corrupt_jpeg_is_excluded_with_the_decoders_warning(case, lossless):
    good = _jpeg(_film())
    data = {"garbage": _garbage_entropy, "zeros": _zero_entropy, "10000x10000-header": lambda d: _claims_size(d, 10000, 10000)}[case](good)
    with pytest.raises(ConversionError) as raised:
        convert_bytes(data, ConvertSettings(lossless_jpeg=lossless), name=f"{case}.jpg")
    assert raised.value.reason == "image-corrupt"
    message = str(raised.value)
    assert message.startswith(f"{case}.jpg: libjpeg-turbo reports damage") and "Corrupt JPEG data" in message
    assert "download it again" in message
    assert "image-corrupt" in records.REASONS


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_jpeg_missing_only_its_end_marker_is_accepted_with_the_repair_noted(progressive):
    whole = _jpeg(_film(), progressive=progressive)
    assert whole.endswith(b"\xff\xd9")
    expected = convert_bytes(whole)
    repaired = convert_bytes(whole[:-2], name="no-eoi.jpg")
    assert repaired.data == expected.data and repaired.conversion == expected.conversion == "lossless-jpeg"
    assert repaired.repair == JPEG_END_MARKER_ADDED and expected.repair == ""
    decoded = convert_bytes(whole[:-2], ConvertSettings(lossless_jpeg=False))
    assert decoded.data == convert_bytes(whole, ConvertSettings(lossless_jpeg=False)).data
    assert decoded.repair == JPEG_END_MARKER_ADDED


def test_progressive_jpeg_cut_between_scans_is_not_repaired():
    """Cut after a complete scan, it would read cleanly once an end marker is appended, to a blurrier
    picture: the scans that refine the last coefficient bits are missing, so no repair is made."""
    whole = _jpeg(_film(), progressive=True)
    cut = whole[: _scan_starts(whole)[-1]]  # every scan but the last, each complete; no end marker
    for lossless in (True, False):
        with pytest.raises(ConversionError) as raised:
            convert_bytes(cut, ConvertSettings(lossless_jpeg=lossless), name="cut.jpg")
        assert raised.value.reason == "image-corrupt" and "Premature end of JPEG file" in str(raised.value)


def test_png_missing_its_end_chunk_is_accepted_with_the_repair_noted():
    buffer = io.BytesIO()
    Image.fromarray(_film(64, 48)).save(buffer, "PNG")
    whole = buffer.getvalue()
    assert whole.endswith(b"IEND\xaeB`\x82")
    expected = convert_bytes(whole, ConvertSettings(fallback_format="png"))
    repaired = convert_bytes(whole[:-12], ConvertSettings(fallback_format="png"))
    assert repaired.data == expected.data and repaired.repair == PNG_END_CHUNK_MISSING and expected.repair == ""


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _twelve_bit_jpeg() -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.encaps import generate_frames

    return next(generate_frames(pydicom.dcmread(get_testdata_file("JPGExtended.dcm")).PixelData, number_of_frames=1))


@pytest.mark.parametrize("kind", ["arithmetic", "12-bit"])
def test_arithmetic_and_twelve_bit_jpegs_apply_their_exif_orientation(kind):
    import libjpeg

    if kind == "arithmetic":
        turbojpeg = pytest.importorskip("turbojpeg")
        source = turbojpeg.compress(_film(64, 48), 90, turbojpeg.SAMP.GRAY, arithmetic=True)
    else:
        source = _twelve_bit_jpeg()
    png = ConvertSettings(fallback_format="png")
    if kind == "arithmetic":
        upright = np.asarray(libjpeg.decode(source)).astype(np.uint8)  # its luminance as stored
    else:
        upright = np.asarray(Image.open(io.BytesIO(convert_bytes(source, png).data)))  # stretched to 8 bits
    for orientation, turn in ((6, -1), (8, 1), (3, 2)):
        result = convert_bytes(_with_exif_orientation(source, orientation), png)
        rotated = np.asarray(Image.open(io.BytesIO(result.data)))
        assert (result.width, result.height) == (rotated.shape[1], rotated.shape[0])
        np.testing.assert_array_equal(rotated, np.rot90(upright, turn))


# ---- 7. in a build: what the report says ------------------------------------------------------------


def test_build_excludes_corrupt_and_bomb_jpegs_and_notes_the_repairs(fresh_world, tmp_path):
    world = fresh_world

    def replace(path: str, data: bytes) -> None:
        world.served[f"/{COHEN[0]}/{COHEN[1]}/{path}"] = data
        lock = world.manifest_dir / "locks" / "cohen.tsv"
        lines = [f"{path}\t{git_blob_sha1(data)}\t{len(data)}" if line.startswith(path + "\t") else line
                 for line in lock.read_text().splitlines()]
        lock.write_text("\n".join(lines) + "\n")

    complete = _jpeg(_film(120, 96, seed=3))
    replace("images/c1-a.jpg", complete[:-2])  # only the end marker missing: accepted
    replace("images/c9.jpg", _garbage_entropy(_jpeg(_film(120, 96, seed=4))))  # garbage entropy data: excluded
    replace("images/c1-b.jpg", _with_many_scans(_progressive((96, 80), seed=5), MAX_JPEG_SCANS))  # excluded
    manifest = world.manifest_dir / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("train: {COVID-19: 10,", "train: {COVID-19: 8,"))
    out = tmp_path / "out"
    with LoopbackServer(dict(world.served)) as server:
        result = cli("build", "--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir",
                     str(tmp_path / "cache"), "-q", "--workers", "1", "--out", str(out), "--kaggle-archive", str(world.kaggle_zip))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "build_report.json").read_text())
    excluded = {e["source_path"]: e for e in report["exclusions"] if e["stage"] == "convert"}
    assert {p: e["reason"] for p, e in excluded.items()} == {"images/c9.jpg": "image-corrupt",
                                                             "images/c1-b.jpg": "image-too-many-scans"}
    assert "Corrupt JPEG data" in excluded["images/c9.jpg"]["detail"]
    assert report["conversions"]["repaired"] == [{"source": "cohen", "source_path": "images/c1-a.jpg", "repair": JPEG_END_MARKER_ADDED}]
    counts = dict(EXPECTED, train={**EXPECTED["train"], "COVID-19": 8})
    assert report["counts"] == counts
    import pyarrow.parquet as pq

    rows = {r["source_path"]: r for r in pq.read_table(sorted((out / "data").rglob("*.parquet"))).to_pylist() if r["source"] == "cohen"}
    assert rows["images/c1-a.jpg"]["conversion"] == "lossless-jpeg"
    assert rows["images/c1-a.jpg"]["image"]["bytes"] == convert_bytes(complete).data  # the complete file's pixels
