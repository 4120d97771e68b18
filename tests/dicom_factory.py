"""Synthetic DICOM files for the convert tests, made with pydicom (and, where pydicom has no
encoder for a transfer syntax here, with Pillow or python-gdcm).

``make_dataset`` builds an uncompressed single- or multi-frame DX/CR dataset from a numpy array;
the ``compress_*`` helpers return a copy encoded with one transfer syntax; ``to_bytes`` writes a
Part 10 file (128-byte preamble + ``DICM``) into memory.
"""

from __future__ import annotations

import copy
import io
import os
import tempfile
from collections.abc import Sequence

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

DIGITAL_XRAY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
COMPUTED_RADIOGRAPHY = "1.2.840.10008.5.1.4.1.1.1"
_FIXED_UID_ROOT = "1.2.826.0.1.3680043.10.1234."  # fixed UIDs keep the files reproducible


def make_dataset(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    rescale: tuple[float, float] | None = None,
    window: tuple[Sequence[float] | float, Sequence[float] | float] | None = None,
    voi_function: str | None = None,
    voi_lut: tuple[Sequence[int], Sequence[int]] | None = None,
    voi_lut_vr: str = "US",
    frames: int = 1,
    modality: str = "DX",
    raw_pixel_bytes: bytes | None = None,
) -> Dataset:
    """An uncompressed (Explicit VR Little Endian) dataset holding ``pixels``.

    ``pixels``: (rows, columns) or (rows, columns, 3) for colour, with a leading frame axis when
    ``frames > 1``. ``voi_lut`` is (LUT Descriptor, LUT Data), its data
    written with VR ``voi_lut_vr`` ("US" or "OW"). ``raw_pixel_bytes`` replaces the
    Pixel Data bytes (to store values the array cannot express, e.g. unextended signed values).
    """
    samples = 3 if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") else 1
    bits_allocated = pixels.dtype.itemsize * 8
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = DIGITAL_XRAY_FOR_PRESENTATION if modality == "DX" else COMPUTED_RADIOGRAPHY
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = _FIXED_UID_ROOT + "1"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = _FIXED_UID_ROOT + "1"
    ds.StudyInstanceUID = _FIXED_UID_ROOT + "2"
    ds.SeriesInstanceUID = _FIXED_UID_ROOT + "3"
    ds.Modality = modality
    ds.PatientID = "SYNTHETIC"
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples == 3 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored or bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function is not None:
        ds.VOILUTFunction = voi_function
    if voi_lut is not None:
        descriptor, data = voi_lut
        item = Dataset()
        item.add_new(0x00283002, "US", [int(v) for v in descriptor])  # LUT Descriptor
        if voi_lut_vr == "OW":  # LUT Data: US values, or OW words in the file's byte order
            item.add_new(0x00283006, "OW", np.asarray(data, dtype="<u2").tobytes())
        else:
            item.add_new(0x00283006, "US", [int(v) for v in data])
        ds.VOILUTSequence = [item]
    ds.PixelData = raw_pixel_bytes if raw_pixel_bytes is not None else pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def compress_with_pydicom(ds: Dataset, uid: str, **kwargs) -> Dataset:
    """``ds`` encoded by pydicom's own encoders (RLE Lossless; JPEG 2000 via pylibjpeg-openjpeg)."""
    out = copy.deepcopy(ds)
    out.compress(uid, generate_instance_uid=False, **kwargs)
    return out


def encapsulate_frame(ds: Dataset, codestream: bytes, uid: str, *, photometric: str | None = None) -> Dataset:
    """``ds`` with its pixels replaced by one encapsulated ``codestream`` of transfer syntax ``uid``."""
    out = copy.deepcopy(ds)
    out.file_meta.TransferSyntaxUID = UID(uid)
    out.PixelData = encapsulate([codestream])
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    if photometric is not None:
        out.PhotometricInterpretation = photometric
    return out


def compress_jpeg_baseline_with_pillow(ds: Dataset, pixels: np.ndarray, quality: int = 90) -> Dataset:
    """JPEG Baseline (1.2.840.10008.1.2.4.50): pydicom has no encoder for it, Pillow writes it.

    8-bit grayscale -> MONOCHROME2; RGB -> YBR_FULL_422 (4:2:2 sampling, as the DICOM term says).
    """
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if image.mode == "RGB":
        image.save(buffer, format="JPEG", quality=quality, subsampling=1)
        photometric = "YBR_FULL_422"
    else:
        image.save(buffer, format="JPEG", quality=quality)
        photometric = "MONOCHROME2"
    out = encapsulate_frame(ds, buffer.getvalue(), JPEGBaseline8Bit, photometric=photometric)
    out.LossyImageCompression = "01"
    return out


def gdcm_available() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


_GDCM_SYNTAX = {
    JPEGLSLossless: "JPEGLSLossless",
    JPEGLSNearLossless: "JPEGLSNearLossless",
    JPEGLosslessSV1: "JPEGLosslessProcess14_1",
    JPEGLossless: "JPEGLosslessProcess14",
    JPEG2000Lossless: "JPEG2000Lossless",
    JPEG2000: "JPEG2000",
    RLELossless: "RLELossless",
}


def compress_with_gdcm(ds: Dataset, uid: str, *, near_lossless_error: int = 0) -> bytes:
    """A Part 10 file of ``ds`` encoded by python-gdcm (JPEG-LS and JPEG Lossless, which
    pydicom cannot encode here). ``near_lossless_error`` > 0 makes JPEG-LS genuinely lossy."""
    import gdcm

    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "in.dcm"), os.path.join(folder, "out.dcm")
        ds.save_as(source, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(source)
        if not reader.Read():
            raise RuntimeError("gdcm could not read the synthetic file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, _GDCM_SYNTAX[uid])))
        if near_lossless_error:
            codec = gdcm.JPEGLSCodec()
            codec.SetLossless(False)
            codec.SetLossyError(near_lossless_error)
            change.SetUserCodec(codec)
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"gdcm could not encode {uid}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(target)
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write the encoded file")
        with open(target, "rb") as stream:
            return stream.read()


def with_frame_size(codestream: bytes, width: int, height: int) -> bytes:
    """A JPEG codestream whose frame header (SOFn) states ``width`` x ``height`` instead of its own size;
    the entropy-coded data are left as they are."""
    import struct

    offset = 2
    while codestream[offset + 1] not in (0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA, 0xCB, 0xF7):
        offset += 2 + struct.unpack_from(">H", codestream, offset + 2)[0]
    return codestream[: offset + 5] + struct.pack(">HH", height, width) + codestream[offset + 9 :]


def deflated_with_hidden_element(ds: Dataset, hidden_bytes: int, *, chunk: int = 1 << 24) -> bytes:
    """A Part 10 file of ``ds`` in Deflated Explicit VR Little Endian, its dataset followed by a private
    element (7FE1,1000) OB of ``hidden_bytes`` zeros: a few KB per hundred MB on disk. The zeros are
    streamed through the compressor, never held."""
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    meta = copy.deepcopy(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    creator = b"HIDDEN  "
    raw = body.getvalue() + struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator
    raw += struct.pack("<HH2sHI", 0x7FE1, 0x1000, b"OB", 0, hidden_bytes)
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [head.getvalue(), deflater.compress(raw)]
    zeros, left = bytes(min(chunk, hidden_bytes)), hidden_bytes
    while left:
        out.append(deflater.compress(zeros[: min(chunk, left)]))
        left -= min(chunk, left)
    out.append(deflater.flush())
    return b"".join(out)
