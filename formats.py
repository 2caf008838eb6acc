"""Cine data as public datasets ship it, read and converted into the project's ``cine.npz``; raw
scanner k-space read into one layout and converted into a k-space ``.npz``.

    python formats.py convert INPUT [INPUT ...] --out cine.npz [--frames=20 --size=192 ...]
    python formats.py convert cine_sax.mat --kspace [--mask cine_sax_mask.mat] --out kspace.npz

Readers return cines ``[n, t, x, y]`` in the file's own dtype (x = image rows, the phase-encoding
axis of the project's masks; y = columns):

- NIfTI (ACDC ``patientXXX_4d.nii.gz``): the voxel array ``(i, j, slice, t)`` as stored, no
  reorientation by the affine; every slice becomes one cine ``[t, i, j]`` (i -> rows, j -> columns).
- DICOM: a folder holding one slice's frames; frames ordered by TriggerTime, then InstanceNumber;
  RescaleSlope/RescaleIntercept applied; pixel rows -> x, columns -> y.
- MATLAB ``.mat`` v5 (scipy) and v7.3 (HDF5, h5py; its arrays are stored transposed and are
  transposed back), and ``.npy`` / ``.npz``: a 4-D array is ``[n, t, x, y]`` and a 3-D one a single
  cine ``[t, x, y]`` unless ``axes`` says otherwise (``"xyt"``, ``"xytn"``: letters n, t, x, y in the
  array's axis order, MATLAB's ``size()`` order for .mat files).

nibabel, pydicom and h5py (requirements-extras.txt, which requirements.txt includes) are imported
only when a file of their format is read.
:func:`conform` crops/pads and resamples cines in time; :func:`convert` is the ``convert`` command.

Measured k-space (:func:`read_kspace`, layout :class:`KSpace`: ``kspace`` ``[N, C, T, H, W]`` complex64,
``mask`` ``[N, T, H, W]``, optional ``sensitivities`` ``[N, C, H, W]`` and ``pixel_size``; exact file
layouts in docs/formats.md): CMRxRecon cine ``.mat`` files (v7.3, h5py, with their ``*_mask.mat``),
ISMRMRD/MRD ``.h5`` raw data (h5py and the ismrmrd package) and our k-space ``.npz``.
"""
from __future__ import annotations

import importlib
import io
import math
import os
import sys
import tokenize
import zipfile
import zlib
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cli import (UserError, atomic_write, check_name_length, check_readable, cli_errors, positive,
                 remove_stale_temporaries, run_command)

# ----------------------------------------------------------------------------- reading safely
# The memory budget of reading one file: the data it declares (arrays as stored, decompressed bytes,
# DICOM elements) may take at most READ_EXPANSION times the file's size on disk plus READ_ALLOWANCE,
# and are checked against it before anything is allocated or decompressed. Real cines compress 2-4
# times; an array of zeros a thousand times. Loading must also fit in the memory available.
READ_EXPANSION, READ_ALLOWANCE = 64, 64 * 2 ** 20


MEMINFO = Path("/proc/meminfo")


CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: memory.max and memory.current


class DataError(UserError):
    """A data file that cannot be used; the message names the file and the problem."""


def available_memory() -> int:
    """Bytes of memory this process can still use: the system's ``MemAvailable``, or what a cgroup
    limit leaves if that is less."""
    found = []
    with suppress(OSError, ValueError, IndexError):
        found += [int(line.split()[1]) * 1024 for line in MEMINFO.read_text().splitlines()
                  if line.startswith("MemAvailable:")]
    with suppress(OSError, ValueError):
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((CGROUP / "memory.current").read_text()))
    return min(found) if found else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def format_bytes(count: float) -> str:
    """``38654705664000`` -> ``'35.2 TiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def check_memory(source: str, needed: int, what: str) -> None:
    """Refuse, before allocating, work that needs more than the memory available (``what`` says
    what needs ``needed`` bytes)."""
    available = available_memory()
    if needed > available:
        raise DataError(f"{source}: {what} would need about {format_bytes(needed)} of memory, more than the "
                        f"{format_bytes(available)} available")


def read_budget(stored: int) -> int:
    """Bytes of data that reading a file of ``stored`` bytes may produce (see ``READ_EXPANSION``)."""
    return READ_EXPANSION * stored + READ_ALLOWANCE


def check_declared(source: str, declared: int, stored: int, what: str) -> None:
    """Refuse a file of ``stored`` bytes whose ``what`` declares ``declared`` bytes of data, more than
    its read budget (:func:`read_budget`): a small file never takes gigabytes."""
    budget = read_budget(stored)
    if declared > budget:
        raise DataError(f"{source}: {what} declares {format_bytes(declared)} of data in a file of "
                        f"{format_bytes(stored)}, more than the read budget of {format_bytes(budget)} "
                        f"({READ_EXPANSION} times the file's size plus {format_bytes(READ_ALLOWANCE)})")


def header_number(source: str, what: str, value, low: float, high: float, integer: bool = False):
    """``value``, a number read from a file's header (``what`` names the field), if it is a finite
    number (an integer with ``integer``) from ``low`` to ``high``; else a one-line ``DataError``.
    Every number of a header that sizes, scales or places data goes through this before it is used."""
    kind = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if integer and math.isfinite(number) and number != int(number):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        shown = "missing" if value is None else (repr(value) if isinstance(value, str) else str(value))[:40]
        raise DataError(f"{source}: {what} is {shown}: expected {kind} from {low:g} to {high:g}")
    return int(number) if integer else number


def loading_bytes(shape, dtype) -> int:
    """Memory that loading an array needs: as stored, converted to float32/complex64, normalised."""
    dtype = np.dtype(dtype)
    return math.prod(shape) * (dtype.itemsize + 2 * (8 if dtype.kind == "c" else 4))


def _npy_header(file, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header at the start of ``file`` (nothing else is read)."""
    try:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(file)
    except (ValueError, TypeError, SyntaxError, EOFError, tokenize.TokenError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise DataError(f"{source}: not a readable .npy/.npz file (malformed .npy header: {reason})") from None
    return tuple(shape), dtype


def _check_size(source: str, shape, dtype, stored: int, on_disk: int) -> None:
    """Refuse a header that promises more data than ``stored`` bytes, more than the read budget of a
    file of ``on_disk`` bytes, or more than memory holds."""
    if dtype.hasobject:
        raise DataError(f"{source}: holds pickled Python objects, which are refused for safety; "
                        f"save a plain numeric array")
    claimed = math.prod(shape) * dtype.itemsize
    if stored < claimed:
        raise DataError(f"{source}: truncated or damaged: its header describes an array {tuple(shape)} of {dtype} "
                        f"({format_bytes(claimed)}) but it holds {format_bytes(stored)} of data")
    check_declared(source, claimed, on_disk, f"the array {tuple(shape)} of {dtype}")
    check_memory(source, loading_bytes(shape, dtype), f"loading the array {tuple(shape)} of {dtype}")


def _choose_key(path: Path, names: list[str], key: str | None) -> str:
    """The array to read from an ``.npz`` holding ``names``: ``key``, else 'dataset', else the only one."""
    if key is None:
        if "dataset" in names:
            return "dataset"
        if len(names) == 1:
            return names[0]
        raise DataError(f"{path}: no array named 'dataset' and {len(names)} arrays to choose from "
                        f"({', '.join(names) or 'none'}); name one with key=...")
    if key not in names:
        raise DataError(f"{path}: no array named {key!r} (found: {', '.join(names) or 'none'})")
    return key


def array_header(path, key: str | None = None) -> tuple[str | None, tuple[int, ...], np.dtype]:
    """``(array name in an .npz or None, shape, dtype)`` of a .npy/.npz file, read from its headers
    alone (numpy's format header; for an .npz that of the zip member). Only regular files are read;
    a header that promises more data than the file holds, or more than memory holds, is refused
    before anything is allocated."""
    path = check_readable(path, expected="a .npz or .npy file", error=DataError)
    with open(path, "rb") as file:
        magic = file.read(6)
        if magic == b"\x93NUMPY":
            file.seek(0)
            shape, dtype = _npy_header(file, str(path))
            size = path.stat().st_size
            _check_size(str(path), shape, dtype, size - file.tell(), size)
            return None, shape, dtype
    if magic[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: not a .npy/.npz file (its content is neither a numpy array nor a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4] if name.endswith(".npy") else name: name for name in archive.namelist()}
            key = _choose_key(path, list(members), key)
            info = archive.getinfo(members[key])
            with archive.open(info) as member:
                shape, dtype = _npy_header(member, f"{path}: array {key!r}")
                offset = member.tell()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as error:
        raise DataError(f"{path}: not a readable .npy/.npz file ({error})") from None
    _check_size(f"{path}: array {key!r}", shape, dtype, info.file_size - offset, path.stat().st_size)
    return key, shape, dtype


def read_array(path: Path, key: str | None) -> np.ndarray:
    """Read an array from a .npy or .npz file (``key``: its name in an .npz) without ever unpickling,
    after checking its header (:func:`array_header`)."""
    key, _, _ = array_header(path, key)
    source = str(path) if key is None else f"{path}: array {key!r}"
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as loaded:
            return loaded[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{source}: holds pickled Python objects, which are refused for safety; "
                            f"save a plain numeric array") from None
        raise DataError(f"{source}: cannot be read ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{source}: cannot be read ({error})") from None


def read_array_item(path: Path, key: str, index: int) -> np.ndarray:
    """Item ``index`` of the first axis of the array ``key`` of an ``.npz`` (``array[index]``), read alone:
    the zip member is streamed up to that item (a compressed member is decompressed on the way, never
    held), so memory holds one item whatever the array's size. The header is checked first
    (:func:`array_header`); a Fortran-ordered array is refused (its items are not contiguous)."""
    key, shape, dtype = array_header(path, key)
    source = f"{path}: array {key!r}"
    if not 0 <= index < shape[0]:
        raise DataError(f"{source}: item {index} of {shape[0]}")
    size = math.prod(shape[1:]) * dtype.itemsize
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open(f"{key}.npy" if f"{key}.npy" in archive.namelist() else key) as member:
                version = np.lib.format.read_magic(member)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                _, fortran, _ = read(member)
                if fortran:
                    raise DataError(f"{source}: stored in Fortran order; save it in C order (np.ascontiguousarray)")
                member.seek(member.tell() + index * size)
                raw = member.read(size)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{source}: cannot be read ({error})") from None
    if len(raw) != size:
        raise DataError(f"{source}: truncated at item {index}")
    return np.frombuffer(raw, dtype).reshape(shape[1:]).copy()


def check_cines(array: np.ndarray, source: str) -> np.ndarray:
    """Validate a ``[nsamples, nt, nx, ny]`` array and return it as float32 or complex64.

    Integer images (as DICOM/NIfTI often hold) become float32; booleans, strings and objects,
    empty arrays, other ranks, NaN/Inf and all-zero cines raise ``DataError`` naming ``source``.
    """
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
        raise DataError(f"{source}: dtype {array.dtype} is not numeric image data "
                        f"(expected float, complex or integer values)")
    if array.ndim != 4:
        hint = "; for a single cine save x[None]" if array.ndim == 3 else ""
        raise DataError(f"{source}: expected 4 dimensions [nsamples, nt, nx, ny], "
                        f"got {array.ndim} with shape {tuple(array.shape)}{hint}")
    if array.size == 0:
        raise DataError(f"{source}: the array is empty (shape {tuple(array.shape)})")
    array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        first = int(np.argwhere(~finite.reshape(array.shape[0], -1).all(1))[0, 0])
        raise DataError(f"{source}: {bad} NaN/Inf values (first in cine {first})")
    peaks = np.abs(array).reshape(array.shape[0], -1).max(1)
    if (peaks == 0).any():
        raise DataError(f"{source}: cine {int(np.argmin(peaks))} is all zeros and cannot be normalised")
    return array


def normalize(cines: np.ndarray) -> np.ndarray:
    """Scale every cine ``[N, T, H, W]`` so that its largest magnitude is 1."""
    peaks = np.abs(cines).reshape(cines.shape[0], -1).max(1)
    return (cines / peaks[:, None, None, None]).astype(cines.dtype, copy=False)


def load_cine(path, key: str | None = None) -> np.ndarray:
    """Load ``[nsamples, nt, nx, ny]`` cines from ``.npz`` (array ``dataset``, ``key``, or the only
    array) or ``.npy``; real or complex. Returns float32/complex64, each cine with peak magnitude 1.
    Raises ``DataError`` (one line naming the file) for anything unusable.
    """
    return normalize(check_cines(read_array(cine_file(path), key), str(path)))


def cine_file(path) -> Path:
    """``path`` if it is a regular ``.npz``/``.npy`` file, else a one-line ``DataError``."""
    path = check_readable(path, expected="a .npz or .npy file", error=DataError)
    if path.suffix.lower() not in (".npz", ".npy"):
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; expected .npz or .npy "
                        f"(convert other formats with: python formats.py convert ...)")
    return path


def optional_array(path, name: str) -> np.ndarray | None:
    """The array ``name`` of an .npz beside its 'dataset', or None if the file has none."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as loaded:
        if name not in loaded.files:
            return None
    return read_array(path, name)


def load_subjects(path) -> np.ndarray | None:
    """The ``subject`` array ``[N]`` of an .npz written by ``python formats.py convert`` (the file,
    patient or series each cine came from), or None if the file has none."""
    subjects = optional_array(path, "subject")
    if subjects is not None and subjects.ndim != 1:
        raise DataError(f"{path}: array 'subject' of shape {list(subjects.shape)}: expected one name per cine [N]")
    return subjects


def check_boxes(boxes: np.ndarray, count: int, shape: tuple[int, int], source: str) -> np.ndarray:
    """Heart boxes as int64 ``[count, 4]`` ``(row0, row1, col0, col1)``, half-open, in pixels of
    ``shape`` (H, W) images: given per cine ``[count, 4]`` or one ``[4]`` for every cine."""
    boxes = np.asarray(boxes)
    if boxes.shape == (4,):
        boxes = np.tile(boxes, (count, 1))
    if boxes.shape != (count, 4) or not np.issubdtype(boxes.dtype, np.integer):
        raise DataError(f"{source}: heart boxes must be integers [{count}, 4] or [4] (row0, row1, col0, col1), "
                        f"got {boxes.dtype} {list(boxes.shape)}")
    height, width = shape
    bad = ((boxes[:, 0] < 0) | (boxes[:, 1] > height) | (boxes[:, 0] >= boxes[:, 1])
           | (boxes[:, 2] < 0) | (boxes[:, 3] > width) | (boxes[:, 2] >= boxes[:, 3]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: heart box {boxes[i].tolist()} of cine {i} is not inside its {height}x{width} "
                        f"images (0 <= row0 < row1 <= {height}, 0 <= col0 < col1 <= {width})")
    return boxes.astype(np.int64)


def load_boxes(path, count: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The ``heart_box`` array of an .npz (written by ``formats.py convert --heart_box`` or
    ``phantom.py``) checked by :func:`check_boxes`, or None if the file has none."""
    boxes = optional_array(path, "heart_box")
    return None if boxes is None else check_boxes(boxes, count, shape, f"{path}: array 'heart_box'")


EXTRAS_HINT = "pip install -r requirements-extras.txt"
CINE_AXES = "ntxy"


def _optional(module: str, source, what: str):
    """Import the optional extra ``module`` or raise a one-line ``DataError`` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{source}: reading {what} needs {module}: {EXTRAS_HINT}") from None


SCALING_LIMIT = 1e30  # the largest rescale slope or intercept of a header (beyond, float32 values overflow)


def read_nifti(path: Path) -> tuple[np.ndarray, str]:
    """A 4-D NIfTI cine volume ``(x, y, slice, t)`` -> ``[slice, t, x, y]`` (one cine per slice; empty
    slices, which some volumes hold beyond the heart, are skipped). The header's shape and data type
    are checked against the read budget and the memory available before the voxels are read; colour
    voxels (RGB24, RGBA32) are refused, and so is a scaling that is not a finite number."""
    nibabel = _optional("nibabel", path, "NIfTI")
    unreadable = (nibabel.filebasedimages.ImageFileError, nibabel.spatialimages.HeaderDataError, OSError,
                  EOFError, ValueError, zlib.error)
    try:
        image = nibabel.load(path)
        shape, stored = image.shape, image.get_data_dtype()
    except unreadable as error:
        raise DataError(f"{path}: not a readable NIfTI file ({error})") from None
    if len(shape) != 4 or min(shape) < 1:
        raise DataError(f"{path}: expected a 4-D (x, y, slice, time) cine volume, got shape {shape}")
    if stored.names is not None or stored.kind not in "biufc":
        kind = image.header.get_value_label("datatype") if "datatype" in image.header else stored
        raise DataError(f"{path}: voxels of type {kind}: a colour (or non-numeric) image, not MR signal intensities; "
                        f"store the grey-scale magnitude (e.g. float32) instead")
    for name in ("slope", "inter"):
        scaling = getattr(image.dataobj, name, None)
        if scaling is not None:
            header_number(str(path), f"the header's scl_{name}", scaling, -SCALING_LIMIT, SCALING_LIMIT)
    check_declared(str(path), math.prod(shape) * stored.itemsize, path.stat().st_size,
                   f"the header's volume {shape} of {stored}")
    check_memory(str(path), loading_bytes(shape, np.float64), f"reading the volume {shape}")
    try:
        volume = np.asanyarray(image.dataobj)  # scl_slope/scl_inter applied
    except unreadable as error:
        raise DataError(f"{path}: not a readable NIfTI file ({error})") from None
    x, y, slices, frames = volume.shape
    cines = volume.transpose(2, 3, 0, 1)
    signal = cines.reshape(slices, -1).any(1)
    skipped = f", {int((~signal).sum())} empty slice(s) skipped" if not signal.all() else ""
    return cines[signal], f"NIfTI {x}x{y}x{slices}x{frames} (x, y, slice, t), one cine per slice{skipped}"


def _frame_order(frames: list) -> tuple[list, str]:
    """Sort ``(path, dataset)`` pairs by TriggerTime, then InstanceNumber (whichever every frame has)."""
    keys = [name for name in ("TriggerTime", "InstanceNumber") if all(name in ds for _, ds in frames)]
    if not keys:
        raise DataError(f"{frames[0][0].parent}: cannot order the frames: they lack TriggerTime and InstanceNumber")
    for path, dataset in frames:
        for name in keys:
            value = dataset.get(name)
            try:
                finite = math.isfinite(float(value))
            except (TypeError, ValueError):
                finite = False
            if not finite:
                shown = "empty" if value in (None, "") else repr(value)
                raise DataError(f"{path}: {name} is {shown}, not a number, so the frames cannot be ordered") from None
    ordered = sorted(frames, key=lambda item: tuple(float(item[1].get(name)) for name in keys))
    return ordered, " then ".join(keys)


DICOM_META_START = 132 + 12  # preamble, 'DICM', then the (0002,0000) group length element
INFLATE_CHUNK = 2 ** 20


def _check_inflated(path: Path, offset: int) -> None:
    """Refuse a deflated DICOM file whose data after ``offset`` inflate beyond its read budget,
    inflating chunk by chunk and keeping nothing, so no more than the budget is ever decompressed."""
    stored, inflated = path.stat().st_size, 0
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    with open(path, "rb") as file:
        file.seek(offset)
        for chunk in iter(lambda: file.read(INFLATE_CHUNK), b""):
            while chunk:
                try:
                    inflated += len(inflater.decompress(chunk, INFLATE_CHUNK))
                except zlib.error as error:
                    raise DataError(f"{path}: not a readable deflated DICOM file ({error})") from None
                check_declared(str(path), inflated, stored, "its deflated data set")
                chunk = inflater.unconsumed_tail


def _read_dicom_file(path: Path, pydicom):
    """One DICOM file, or None if it is not one; a deflated one is measured first (:func:`_check_inflated`)."""
    unreadable = (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError, AttributeError)
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except unreadable:
        return None
    if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
        _check_inflated(path, DICOM_META_START + int(meta.get("FileMetaInformationGroupLength", 0)))
    try:
        return pydicom.dcmread(path)
    except unreadable:
        return None


def _dicom_number(path: Path, dataset, name: str, default, low: float, high: float, integer: bool = False):
    """The header number ``name`` of a DICOM ``dataset`` (``default`` where absent or empty), checked by
    :func:`header_number`; an element pydicom cannot decode is one line too."""
    try:
        value = dataset.get(name, default)
    except (ValueError, TypeError, OverflowError) as error:
        raise DataError(f"{path}: {name} cannot be read ({error})") from None
    return header_number(str(path), name, default if value in (None, "") else value, low, high, integer)


def _pixels(path: Path, dataset) -> np.ndarray:
    """The decoded frame of ``dataset``, its decoded size checked against the read budget first."""
    size = math.prod(_dicom_number(path, dataset, name, default, low, 2 ** 32, integer=True)
                     for name, default, low in (("Rows", 0, 0), ("Columns", 0, 0), ("NumberOfFrames", 1, 1),
                                                ("SamplesPerPixel", 1, 1)))
    size *= -(-_dicom_number(path, dataset, "BitsAllocated", 8, 1, 64, integer=True) // 8)
    check_declared(str(path), size, path.stat().st_size, "its pixel data")
    try:
        return dataset.pixel_array
    except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
        raise DataError(f"{path}: cannot decode the pixel data ({error})") from None


def _position(path: Path, dataset) -> tuple:
    """ImagePositionPatient (mm), rounded to 1 micrometre, each coordinate a finite number."""
    try:
        coordinates = list(dataset.ImagePositionPatient)
    except (ValueError, TypeError, OverflowError) as error:
        raise DataError(f"{path}: ImagePositionPatient cannot be read ({error})") from None
    return tuple(round(header_number(str(path), "ImagePositionPatient", value, -1e6, 1e6), 3) for value in coordinates)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, str]:
    """One slice's DICOM cine (a folder of single-frame images) -> ``[1, t, rows, columns]`` float32.

    Files that are not DICOM images (DICOMDIR, notes) are skipped; frames of more than one slice
    position or of different sizes are refused. Every file's data, deflated or decoded, is checked
    against the read budget before it is decompressed.
    """
    pydicom = _optional("pydicom", folder, "DICOM")
    frames, skipped = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        dataset = _read_dicom_file(path, pydicom)
        if dataset is not None and "PixelData" in dataset:
            frames.append((path, dataset))
        else:
            skipped += 1
    if not frames:
        raise DataError(f"{folder}: no DICOM images in this folder")
    positions = {_position(path, ds) for path, ds in frames if "ImagePositionPatient" in ds}
    if len(positions) > 1:
        raise DataError(f"{folder}: frames of {len(positions)} slice positions; put one slice's cine per folder")
    frames, order = _frame_order(frames)
    images = []
    for path, dataset in frames:
        pixels = _pixels(path, dataset)
        if pixels.ndim != 2 or (images and pixels.shape != images[0].shape):
            expected = f"{images[0].shape}, like the first frame" if images else "rows x columns"
            raise DataError(f"{path}: image of shape {pixels.shape}; expected one grey-scale frame of {expected}")
        slope, intercept = (_dicom_number(path, dataset, name, default, -SCALING_LIMIT, SCALING_LIMIT)
                            for name, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)))
        images.append(pixels.astype(np.float32) * slope + intercept)
    note = f", {skipped} non-image file(s) skipped" if skipped else ""
    rows, columns = images[0].shape
    return (np.stack(images)[None],
            f"DICOM series of {len(images)} frames {rows}x{columns}, ordered by {order}{note}")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 with a 512-byte user block: the signature sits at 0, 512, 1024, ..."""
    with open(path, "rb") as file:
        head = file.read(2056)
    return any(head[offset:offset + 8] == HDF5_SIGNATURE for offset in (0, 512, 1024, 2048))


def _pick(names: dict, key: str | tuple | None, path: Path) -> str:
    """The variable to read: ``key``, the first present of a tuple of candidate names, else the only
    array of 3 or more dimensions (names: name -> shape)."""
    found = ", ".join(f"{name} {tuple(shape)}" for name, shape in names.items()) or "none"
    if isinstance(key, tuple):  # candidates, in order of preference
        present = [name for name in key if name in names]
        if not present:
            raise DataError(f"{path}: none of the numeric arrays {', '.join(key)} (found: {found}); "
                            f"name one with --key")
        return present[0]
    if key is not None:
        if key not in names:
            raise DataError(f"{path}: no numeric array named {key!r} (found: {found})")
        return key
    cines = [name for name, shape in names.items() if len(shape) >= 3]
    if len(cines) != 1:
        raise DataError(f"{path}: {len(cines)} arrays of 3 or more dimensions (found: {found}); name one with --key")
    return cines[0]


MAT5_ITEMSIZE = dict(double=8, single=4, int8=1, uint8=1, int16=2, uint16=2, int32=4, uint32=4, int64=8, uint64=8)


def _read_mat5(path: Path, key: str | tuple | None) -> tuple[str, np.ndarray]:
    """A v5 variable: the variables' headers are listed first (``whosmat``, which decompresses only
    them), and the chosen one is checked against the read budget before it is read alone."""
    from scipy.io import loadmat, whosmat
    from scipy.io.matlab import MatReadError

    unreadable = (MatReadError, ValueError, NotImplementedError, TypeError, OSError, zlib.error)
    try:
        listed = whosmat(path)
    except unreadable as error:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    numeric = {name: shape for name, shape, kind in listed if kind in MAT5_ITEMSIZE}
    name = _pick(numeric, key, path)
    kind = next(kind for listed_name, _, kind in listed if listed_name == name)
    check_declared(str(path), math.prod(numeric[name]) * MAT5_ITEMSIZE[kind], path.stat().st_size,
                   f"variable {name!r} {numeric[name]} of {kind}")
    try:
        return name, loadmat(path, variable_names=[name])[name]
    except unreadable as error:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({error})") from None


HDF5_LINK_DEPTH = 8  # soft links followed, one after another, to reach a variable of a v7.3 file
HDF5_STEPS = 4096  # names looked up, in all, while reading one HDF5 file (each step of every path and link)


class HDF5Steps:
    """The name look-ups left to the reading of one HDF5 file. Soft links whose targets run through
    soft links again fan out: the link depth bounds one chain, not the total work, which grows as
    the fan-out to the power of the depth. One budget per file bounds it."""

    def __init__(self, path: Path):
        self.path, self.left = path, HDF5_STEPS

    def take(self, variable: str) -> None:
        self.left -= 1
        if self.left < 0:
            raise DataError(f"{self.path}: reaching variable {variable!r} takes more than {HDF5_STEPS} name look-ups "
                            f"in all (soft links that fan out, or too many variables); refused, so that a small file "
                            f"cannot keep the reader busy")


def _hdf5_object(file, name: str, h5py, path: Path, variable: str, depth: int = 0, steps: HDF5Steps | None = None):
    """The object at ``name`` in the HDF5 ``file``, reached without leaving the file: every step of
    the path is looked at as a link before it is followed, and an external link (or a soft link
    that leads to one) is refused naming ``variable``. ``steps``: the file's budget of look-ups
    (:class:`HDF5Steps`; pass one for every name of a file), a fresh one if None."""
    steps = HDF5Steps(path) if steps is None else steps
    node = file
    for part in filter(None, name.split("/")):
        steps.take(variable)
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise DataError(f"{path}: variable {variable!r} is a link to another file ({link.filename}); links "
                            f"out of the file are refused, so that reading a file never reads another")
        if isinstance(link, h5py.SoftLink):
            if depth >= HDF5_LINK_DEPTH:
                raise DataError(f"{path}: variable {variable!r}: more than {HDF5_LINK_DEPTH} soft links in a row "
                                f"(a loop?)")
            target = link.path if link.path.startswith("/") else f"{node.name.rstrip('/')}/{link.path}"
            node = _hdf5_object(file, target, h5py, path, variable, depth + 1, steps)
        elif link is None:
            raise DataError(f"{path}: variable {variable!r} is a link to {name}, which does not exist")
        else:
            node = node[part]
    return node


def _check_own_storage(item, path: Path, variable: str) -> None:
    """Refuse a dataset whose data lie in other files: HDF5 external raw storage (any file, such as
    /etc/passwd, read as the array's bytes) and virtual datasets (made of other files' datasets)."""
    if item.external:
        raise DataError(f"{path}: variable {variable!r} keeps its data in another file ({item.external[0][0]}); "
                        f"HDF5 external storage is refused, so that reading a file never reads another")
    if item.is_virtual:
        raise DataError(f"{path}: variable {variable!r} is an HDF5 virtual dataset (made of other files' data); "
                        f"virtual datasets are refused, so that reading a file never reads another")


def _matlab_class(item) -> bytes:
    """The ``MATLAB_class`` attribute of a v7.3 dataset (``b"double"`` where absent) as one name; an
    attribute that is not one name (an array of names, a number) is one line naming the variable."""
    source = f"{item.file.filename}: variable {item.name.lstrip('/')!r}"
    try:
        value = item.attrs.get("MATLAB_class", b"double")
    except (OSError, TypeError, ValueError) as error:
        raise DataError(f"{source}: its MATLAB_class attribute cannot be read ({error})") from None
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        shown = f"an array {value.dtype} {value.shape}" if isinstance(value, np.ndarray) else f"{type(value).__name__}"
        raise DataError(f"{source}: its MATLAB_class attribute is {shown}, not a class name (such as double)")
    return value


def _is_numeric_hdf5(item, h5py) -> bool:
    """A MATLAB numeric array: real integers or floats, or a complex (real, imag) compound of them."""
    if not isinstance(item, h5py.Dataset) or "MATLAB_empty" in item.attrs:
        return False
    if _matlab_class(item) in (b"char", b"logical"):
        return False
    if item.dtype.names == ("real", "imag"):
        return all(item.dtype[part].kind in "iuf" for part in ("real", "imag"))
    return item.dtype.kind in "iuf"


def _mat73_variables(file, path: Path, h5py) -> tuple[dict, dict]:
    """``(items, numeric)`` of an open v7.3 file: every top-level object reached through the hardened
    HDF5 path (:func:`_hdf5_object`, one :class:`HDF5Steps` budget), and the numeric ones' MATLAB shapes."""
    steps = HDF5Steps(path)
    items = {}
    for name in file:
        steps.take(name)
        items[name] = _hdf5_object(file, name, h5py, path, name, steps=steps)
    return items, {name: item.shape[::-1] for name, item in items.items() if _is_numeric_hdf5(item, h5py)}


def _read_mat73(path: Path, key: str | tuple | None) -> tuple[str, np.ndarray]:
    """A v7.3 variable whose data lie in ``path`` itself: links and datasets that reach other files
    are refused (:func:`_hdf5_object`, :func:`_check_own_storage`) before anything is followed."""
    h5py = _optional("h5py", path, "MATLAB v7.3 .mat files")
    try:
        with h5py.File(path, "r") as file:
            items, numeric = _mat73_variables(file, path, h5py)
            for name, item in items.items():
                if isinstance(item, h5py.Dataset):
                    _check_own_storage(item, path, name)
            name = _pick(numeric, key, path)
            item = items[name]
            stored = np.complex128 if item.dtype.names else item.dtype
            check_declared(str(path), item.size * item.dtype.itemsize, path.stat().st_size,
                           f"variable {name!r} {item.shape[::-1]} of {item.dtype}")
            check_memory(str(path), loading_bytes(item.shape, stored), f"reading the array {item.shape[::-1]}")
            array = item[()]
    except OSError as error:
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from None
    if array.dtype.names:  # MATLAB complex: a compound of real and imaginary parts
        array = array["real"] + 1j * array["imag"]
    return name, array.T  # HDF5 holds MATLAB's column-major array with the axes reversed


def read_mat(path: Path, key: str | tuple | None = None) -> tuple[np.ndarray, str]:
    """A MATLAB array (v5 via scipy, v7.3 via h5py) in MATLAB's axis order, and its description,
    which names the variable read (``key``: see :func:`_pick`)."""
    version = "v7.3" if _is_hdf5(path) else "v5"
    name, array = _read_mat73(path, key) if version == "v7.3" else _read_mat5(path, key)
    return array, f"MATLAB {version} variable {name!r} {'x'.join(map(str, array.shape))}"


def to_cine_axes(array: np.ndarray, axes: str | None, source) -> np.ndarray:
    """Reorder ``array`` whose axes are named by ``axes`` (letters n, t, x, y; default ``ntxy`` for
    4-D and ``txy`` for 3-D) to ``[n, t, x, y]``; a 3-D array is one cine."""
    if axes is None:
        if array.ndim not in (3, 4):
            raise DataError(f"{source}: expected [t, x, y] or [n, t, x, y], got shape {array.shape}; "
                            f"name its axes with --axes (e.g. xyt)")
        axes = CINE_AXES[4 - array.ndim:]
    if (len(set(axes)) != len(axes) or not set("txy") <= set(axes) <= set(CINE_AXES)
            or len(axes) != array.ndim):
        raise DataError(f"{source}: --axes {axes!r} does not describe shape {array.shape}: give one letter per "
                        f"axis from n, t, x, y (t, x and y required, n optional)")
    array = array.transpose([axes.index(name) for name in CINE_AXES if name in axes])
    return array if "n" in axes else array[None]


def read_cines(path, key: str | None = None, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Cines ``[n, t, x, y]`` (the file's dtype, not normalised) from a NIfTI file, a DICOM folder, a
    ``.mat``, ``.npy`` or ``.npz`` file, and a one-line description. ``key`` names the array in
    .mat/.npz files; ``axes`` describes .mat/.npy/.npz layouts (see :func:`to_cine_axes`)."""
    path = check_readable(path, missing="no such file or folder", expected="a data file or a DICOM folder",
                          folder_ok=True, error=DataError)
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith(".dcm"):
        raise DataError(f"{path}: a DICOM cine is a folder of frames: give the folder {path.parent}")
    if name.endswith(".mat"):
        array, description = read_mat(path, key)
    elif name.endswith((".npy", ".npz")):
        array = read_array(path, key)
        description = f"{name.rsplit('.', 1)[1]} array {'x'.join(map(str, array.shape))}"
    else:
        raise DataError(f"{path}: unsupported file type; expected .nii/.nii.gz, .mat, .npy, .npz or a DICOM folder")
    cines = to_cine_axes(array, axes, path)
    return cines, f"{description} (axes {axes or CINE_AXES[4 - array.ndim:]})"


# ----------------------------------------------------------------------------- measured k-space
@dataclass
class KSpace:
    """Measured k-space in the project's one layout (docs/formats.md), as :func:`read_kspace` returns it."""
    kspace: np.ndarray  # [N, C, T, H, W] complex64: cines (slices), coils, frames, ky rows, kx columns; centred (fft2c)
    mask: np.ndarray  # [N, T, H, W] float32 0/1: the samples measured, the same for every coil (maybe a broadcast view)
    sensitivities: np.ndarray | None  # [N, C, H, W] complex64 coil maps held by the file, or None
    pixel_size: np.ndarray | None  # float32 [2]: (row, column) spacing in mm, or None where the file does not say
    description: str  # one line: what was read


LENGTH_MM = (1e-4, 1e4)  # a field of view or pixel spacing read from a file (mm): from 0.1 micrometre to 10 m
# Variables of CMRxRecon cine files (cine_sax.mat, cine_lax.mat), in order of preference: 2023's
# names (fully sampled, then 4x, 8x, 10x undersampled; multi-coil, then single-coil), then 2024's.
CMRXRECON_KSPACE = ("kspace_full", "kspace_sub04", "kspace_sub08", "kspace_sub10", "kspace_single_full",
                    "kspace_single_sub04", "kspace_single_sub08", "kspace_single_sub10", "kspace")
CMRXRECON_MASKS = ("mask04", "mask08", "mask10", "mask")  # the variables of their *_mask.mat files


def npz_arrays(path: Path) -> list[str]:
    """Names of the arrays in an .npz file (empty for anything else)."""
    try:
        if not (path.is_file() and zipfile.is_zipfile(path)):
            return []
    except OSError:  # too long a name, no permission...: the reader that opens it says so in one line
        return []
    with zipfile.ZipFile(path) as archive:
        return [name[:-4] for name in archive.namelist() if name.endswith(".npy")]


def check_mask(mask: np.ndarray, shape: tuple[int, ...], source: str, hint: str = "") -> np.ndarray:
    """A 0/1 mask for cines of ``shape`` ``[N, T, H, W]``, given as ``[N, T, H, W]`` or as ``[T, H, W]``
    (or ``[1, T, H, W]``) for every cine; returned float32, broadcast to ``shape``."""
    mask = mask[None] if mask.ndim == 3 else mask
    if mask.ndim != 4 or mask.shape[1:] != tuple(shape[1:]) or mask.shape[0] not in (1, shape[0]):
        found = mask.shape[1:] if mask.ndim == 4 and mask.shape[0] == 1 else mask.shape
        raise DataError(f"{source}: mask of shape {found}; expected [T, H, W] = {tuple(shape[1:])} for every "
                        f"cine or [N, T, H, W] = {tuple(shape)}{hint}")
    if mask.dtype.kind not in "biuf" or not np.isin(mask, (0, 1)).all():
        raise DataError(f"{source}: the mask must hold only 0 and 1")
    unsampled = np.flatnonzero(~mask.reshape(len(mask), -1).any(1))
    if unsampled.size:
        which = "" if len(mask) == 1 else f" of cine {unsampled[0]}"
        raise DataError(f"{source}: the mask{which} is all zeros: it samples no k-space")
    return np.broadcast_to(mask.astype(np.float32), shape)


def read_mask_file(path, shape: tuple[int, ...], variable: str = "") -> np.ndarray:
    """The mask of measured k-space ``shape`` ``[N, T, H, W]`` from a file the user named: a CMRxRecon
    ``*_mask.mat`` (``mask04`` for ``kspace_sub04``, ...; MATLAB ``(kx, ky)`` for every frame or
    ``(kx, ky, frames)``), or a 0/1 ``.npy``/``.npz`` (array ``mask`` or the only one) ``[T, H, W]``
    or ``[N, T, H, W]``. ``variable``: the k-space variable read, whose acceleration picks the mask."""
    path = check_readable(path, expected="a mask file (.mat, .npy, .npz)", error=DataError)
    source = f"--mask {path}"
    if not path.name.lower().endswith(".mat"):
        return check_mask(read_cines(path, "mask" if "mask" in npz_arrays(path) else None)[0], shape, source)
    factor = variable[-2:] if variable[-2:].isdigit() else ""
    mask, description = read_mat(path, (f"mask{factor}",) if factor else CMRXRECON_MASKS)
    if mask.ndim not in (2, 3):
        raise DataError(f"{source}: {description}: expected a CMRxRecon mask (kx, ky) or (kx, ky, frames)")
    mask = mask.T  # [ky, kx] (every frame) or [T, ky, kx]
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (shape[1], *mask.shape))
    return check_mask(mask, shape, f"{source} ({description})")


def measured_lines(kspace: np.ndarray) -> np.ndarray:
    """The mask of prospectively undersampled k-space ``[N, C, T, H, W]``: the ky lines of each frame
    that hold a non-zero sample in some coil, float32 ``[N, T, H, W]``."""
    lines = (kspace != 0).any(axis=(1, 4))  # [N, T, H]
    return np.broadcast_to(lines[..., None], lines.shape + kspace.shape[-1:]).astype(np.float32)


def check_kspace(kspace: np.ndarray, source: str) -> np.ndarray:
    """Measured k-space as complex64 ``[N, C, T, H, W]``: complex, finite, and not empty."""
    if not np.iscomplexobj(kspace):
        raise DataError(f"{source}: dtype {kspace.dtype}: k-space must be complex")
    if kspace.ndim != 5 or kspace.size == 0:
        raise DataError(f"{source}: k-space of shape {tuple(kspace.shape)}; expected [N, C, T, H, W]")
    if not np.isfinite(kspace).all():
        raise DataError(f"{source}: {int(kspace.size - np.isfinite(kspace).sum())} NaN/Inf k-space values")
    return kspace.astype(np.complex64, copy=False)


def _read_kspace_npz(path: Path, mask) -> KSpace:
    """Our k-space ``.npz``: ``kspace`` ``[N, C, T, H, W]`` (``[N, T, H, W]`` or ``[T, H, W]``: one coil),
    ``mask`` (or ``--mask``), optional ``sensitivities`` ``[N, C, H, W]`` and ``pixel_size`` ``[2]``."""
    kspace = read_array(path, "kspace")
    one_coil = {3: (None, None), 4: (slice(None), None)}  # [T, H, W] and [N, T, H, W] -> [N, 1, T, H, W]
    kspace = check_kspace(kspace[one_coil[kspace.ndim]] if kspace.ndim in one_coil else kspace, f"{path} 'kspace'")
    names = npz_arrays(path)
    if mask is None and "mask" not in names:
        raise DataError(f"{path}: holds 'kspace' but no 'mask'; add it or give --mask")
    shape = (len(kspace), *kspace.shape[2:])
    found = read_mask_file(mask, shape) if mask else check_mask(read_array(path, "mask"), shape, f"{path} 'mask'")
    maps = None
    if "sensitivities" in names:
        maps = read_array(path, "sensitivities")
        maps = maps[None] if maps.ndim == 3 else maps
        if maps.shape != (len(kspace), *kspace.shape[1:2], *kspace.shape[3:]) or not np.iscomplexobj(maps):
            raise DataError(f"{path}: 'sensitivities' {maps.dtype} {tuple(maps.shape)}; expected complex [N, C, H, W] "
                            f"= {(len(kspace), kspace.shape[1], *kspace.shape[3:])}")
        maps = maps.astype(np.complex64)
        if not np.isfinite(maps).all():
            raise DataError(f"{path}: 'sensitivities' hold {int(maps.size - np.isfinite(maps).sum())} NaN/Inf values")
    size = read_array(path, "pixel_size") if "pixel_size" in names else None
    if size is not None:
        if size.shape != (2,) or size.dtype.kind not in "iuf":
            raise DataError(f"{path}: 'pixel_size' {size.dtype} {list(size.shape)}; expected two numbers (mm)")
        size = np.array([header_number(f"{path}: 'pixel_size'", "a spacing (mm)", value, *LENGTH_MM)
                         for value in size.tolist()], np.float32)
    count, coils, frames, height, width = kspace.shape
    return KSpace(kspace, found, maps, size, f"k-space npz: {count} cine(s), {coils} coil(s), {frames} frames of "
                                             f"{height}x{width}, mask from {f'--mask {mask}' if mask else 'the file'}")


def read_cmrxrecon(path: Path, mask=None, key: str | None = None) -> KSpace:
    """A CMRxRecon cine file (MATLAB v7.3): variable ``key`` or the first of :data:`CMRXRECON_KSPACE`,
    MATLAB ``(kx, ky, coils, slices, frames)`` (h5py sees ``(frames, slices, coils, ky, kx)``),
    single-coil ``(kx, ky, slices, frames)`` or one frame of one coil ``(kx, ky)``, complex. The mask
    comes from the ``*_mask.mat`` the user names (``mask``), else it is the ky lines holding data
    (prospective undersampling; a fully sampled file gets a mask of ones)."""
    array, description = read_mat(path, key or CMRXRECON_KSPACE)
    variable = description.split("'")[1]
    if array.ndim == 2:
        array = array[:, :, None, None, None]  # one frame of one coil, one slice
    if array.ndim == 4:
        array = array[:, :, None]  # one coil
    if array.ndim != 5:
        raise DataError(f"{path}: {description}: expected MATLAB (kx, ky, coils, slices, frames), single-coil "
                        f"(kx, ky, slices, frames) or one frame (kx, ky) k-space")
    kspace = check_kspace(array.transpose(3, 2, 4, 1, 0), f"{path} {variable!r}")  # [N, C, T, H, W]
    shape = (len(kspace), *kspace.shape[2:])
    found = read_mask_file(mask, shape, variable) if mask else check_mask(measured_lines(kspace), shape, str(path))
    count, coils, frames, height, width = kspace.shape
    origin = f"--mask {mask}" if mask else "the lines holding data"
    return KSpace(kspace, found, None, None, f"CMRxRecon {description}: {count} slice(s), {coils} coil(s), {frames} "
                                             f"frames of {height} ky x {width} kx, mask from {origin}")


# MRD acquisitions that are not image data (ismrmrd's flag numbers; bit n - 1 of the header's flags)
MRD_SKIPPED = ("ACQ_IS_NOISE_MEASUREMENT", "ACQ_IS_NAVIGATION_DATA", "ACQ_IS_PHASECORR_DATA",
               "ACQ_IS_HPFEEDBACK_DATA", "ACQ_IS_DUMMYSCAN_DATA", "ACQ_IS_RTFEEDBACK_DATA",
               "ACQ_IS_SURFACECOILCORRECTIONSCAN_DATA")


def _mrd_items(file, h5py, path: Path) -> tuple:
    """The ``dataset/xml`` and ``dataset/data`` HDF5 datasets of an MRD file, reached without leaving it."""
    items, steps = [], HDF5Steps(path)
    for name in ("dataset/xml", "dataset/data"):
        if name.split("/")[0] not in file:
            raise DataError(f"{path}: no group 'dataset': not an ISMRMRD/MRD raw-data file")
        item = _hdf5_object(file, name, h5py, path, name, steps=steps)
        if not isinstance(item, h5py.Dataset):
            raise DataError(f"{path}: {name!r} is not an HDF5 dataset: not an ISMRMRD/MRD raw-data file")
        _check_own_storage(item, path, name)
        items.append(item)
    return tuple(items)


def _mrd_header(xml_item, ismrmrd, path: Path):
    """The first encoding of the MRD XML header, parsed by ismrmrd."""
    try:
        text = xml_item[0]
        header = ismrmrd.xsd.CreateFromDocument(text.encode() if isinstance(text, str) else bytes(text))
        return header.encoding[0]
    except Exception as error:  # noqa: BLE001 - xsdata raises many kinds for a malformed header
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        raise DataError(f"{path}: 'dataset/xml' is not a readable ISMRMRD header ({reason})") from None


def _mrd_heads(data_item, ismrmrd, path: Path) -> np.ndarray:
    """The acquisition headers of ``dataset/data``, their dtype checked against ismrmrd's."""
    expected = ismrmrd.hdf5.acquisition_dtype
    if data_item.dtype.names != expected.names or data_item.dtype["head"] != expected["head"] or data_item.ndim != 1:
        raise DataError(f"{path}: 'dataset/data' of dtype {data_item.dtype} {data_item.shape}: not ISMRMRD "
                        f"acquisitions")
    check_declared(str(path), data_item.size * expected["head"].itemsize, path.stat().st_size,
                   f"'dataset/data' of {data_item.size} acquisitions")
    return data_item.fields("head")[()]


def read_mrd(path: Path) -> KSpace:
    """ISMRMRD/MRD raw data (``.h5``, the OCMR layout), read with h5py through the hardened HDF5 path
    and parsed with the ismrmrd package (header XML, acquisition dtype, flag numbers).

    Every image readout (noise, navigator, phase-correction and other non-image acquisitions are
    skipped) lands at ``[slice, coil, frame, ky, kx]``: slice = ``idx.slice``, frame = ``idx.phase``
    (``idx.repetition`` for real-time series, whose phases are all 0), ky row =
    ``kspace_encode_step_1 - center + H // 2`` with the encoding limits' centre (``H // 2`` if
    absent), kx columns from ``center_sample`` (a full readout fills the row); repeated averages are
    averaged. H x W is the encoded matrix; a readout oversampled beyond the reconstructed field of
    view (encoded FOV x > recon FOV x, OCMR: 2x) is cropped to it in the image domain. Pixel size:
    encoded FOV / matrix. 3-D encodings, contrasts and sets are refused.
    """
    return _with_mrd_heads(path, _mrd_whole)


def _mrd_whole(path: Path, encoding, heads: np.ndarray, item) -> KSpace:
    """Every image readout of an MRD file (``heads``: theirs; ``item``: the data item and their rows),
    placed by :func:`_place_readouts`."""
    data_item, rows = item
    counts = heads["number_of_samples"].astype(np.int64) * heads["active_channels"]
    check_declared(str(path), int(counts.sum()) * 8, path.stat().st_size, "its image acquisitions")
    return _place_readouts(path, encoding, heads, data_item.fields("data")[()][rows])


MRD_COUNT = 65535  # the largest matrix size, channel count or counter of an MRD header (unsigned 16 bits)


def _mrd_field(encoding, *names):
    """``encoding.names[0].names[1]...`` of a parsed MRD header, None where a level is missing."""
    for name in names:
        encoding = getattr(encoding, name, None)
    return encoding


def _mrd_geometry(path: Path, encoding) -> tuple[int, int, float, float, float, int]:
    """The numbers of an MRD header's encoding that size and place the data, each checked where it is
    parsed (:func:`header_number`): the encoded matrix (``height`` ky rows, ``width`` kx columns),
    the encoded field of view ``fov_y``, ``fov_x`` (mm), the reconstructed one ``recon`` along x (mm;
    the encoded one where absent), which must keep at least one column, and the ky centre ``center``."""
    source = str(path)

    def number(names: str, low, high, integer=False, default=None):
        value = _mrd_field(encoding, *names.split("."))
        value = default if value is None else value
        return header_number(source, f"the header's {names}", value, low, high, integer)

    height, width = (number(f"encodedSpace.matrixSize.{axis}", 1, MRD_COUNT, integer=True) for axis in "yx")
    fov_y, fov_x = (number(f"encodedSpace.fieldOfView_mm.{axis}", *LENGTH_MM) for axis in "yx")
    recon = number("reconSpace.fieldOfView_mm.x", *LENGTH_MM, default=fov_x)
    if round(width * recon / fov_x) < 1:
        raise DataError(f"{source}: the header's reconstructed field of view, {recon:g} mm, keeps no column of the "
                        f"{width} columns encoded over {fov_x:g} mm")
    center = number("encodingLimits.kspace_encoding_step_1.center", 0, MRD_COUNT, integer=True, default=height // 2)
    return height, width, fov_y, fov_x, recon, center


def _place_readouts(path: Path, encoding, heads: np.ndarray, samples: np.ndarray) -> KSpace:
    """MRD image readouts (``heads``, their ``samples`` float32 interleaved real/imag, channel-major)
    on the encoded grid, averaged over averages; see :func:`read_mrd`."""
    idx = heads["idx"]
    for counter in ("kspace_encode_step_2", "contrast", "set"):
        if idx[counter].any():
            raise DataError(f"{path}: acquisitions with {counter} > 0 (3-D, multi-contrast or multi-set data) are not "
                            f"supported; only 2-D cine series")
    coils = set(heads["active_channels"].tolist())
    if len(coils) != 1:
        raise DataError(f"{path}: image acquisitions with different numbers of active channels {sorted(coils)}")
    coils = header_number(str(path), "active_channels of the image acquisitions", coils.pop(), 1, MRD_COUNT,
                          integer=True)
    frame_counter = "phase" if idx["phase"].any() or not idx["repetition"].any() else "repetition"
    height, width, fov_y, fov_x, recon, center = _mrd_geometry(path, encoding)
    shape = (int(idx["slice"].max()) + 1, coils, int(idx[frame_counter].max()) + 1, height, width)
    check_declared(str(path), math.prod(shape) * 8, path.stat().st_size,
                   f"the encoded k-space {shape} (slices, coils, frames, ky, kx) of complex64")
    check_memory(str(path), 3 * math.prod(shape) * 8, f"k-space {shape} (slices, coils, frames, ky, kx)")
    total = np.zeros(shape, np.complex64)
    taken = np.zeros((shape[0], *shape[2:]), np.float32)  # [N, T, H, W]: readouts summed at each sample
    for head, values, counters in zip(heads, samples, idx):
        length, channels = int(head["number_of_samples"]), int(head["active_channels"])
        if values.size != 2 * length * channels:
            raise DataError(f"{path}: acquisition {int(head['scan_counter'])} holds {values.size} numbers; its header "
                            f"says {length} samples x {channels} channels x 2")
        row = int(counters["kspace_encode_step_1"]) - center + height // 2
        start = (width - length) // 2 if head["center_sample"] == 0 else width // 2 - int(head["center_sample"])
        if not (0 <= row < height and 0 <= start and start + length <= width):
            raise DataError(f"{path}: acquisition {int(head['scan_counter'])} (ky step "
                            f"{int(counters['kspace_encode_step_1'])}, {length} samples) lies outside the encoded "
                            f"{height}x{width} matrix")
        where = (int(counters["slice"]), slice(None), int(counters[frame_counter]), row, slice(start, start + length))
        total[where] += values.view(np.complex64).reshape(channels, length)
        taken[where[:1] + where[2:]] += 1
    kspace = total / np.maximum(taken, 1)[:, None]
    mask = (taken > 0).astype(np.float32)
    notes = f"frames from idx.{frame_counter}"
    columns = int(round(width * recon / fov_x))
    if columns < width:
        if not (mask == mask.max(-1, keepdims=True)).all():
            notes += f"; readout oversampled ({fov_x:g} mm for {recon:g}) but not fully measured: kept, not cropped"
        else:
            kspace, mask = _crop_readout(kspace, columns), mask[..., :columns]
            notes += f"; oversampled readout cropped to the reconstructed {recon:g} mm ({width} -> {columns} columns)"
    check_mask(mask, mask.shape, str(path))
    size = np.array([fov_y / height, fov_x / width], np.float32)
    count, channels, frames, rows, columns = kspace.shape
    return KSpace(check_kspace(kspace, str(path)), mask, None, size,
                  f"ISMRMRD/MRD: {count} slice(s), {channels} coil(s), {frames} frames of {rows} ky x {columns} kx, "
                  f"{len(heads)} image readouts, mask from the lines acquired; {notes}")


def _crop_readout(kspace: np.ndarray, columns: int) -> np.ndarray:
    """Keep the central ``columns`` of the field of view along kx (the last axis): inverse centred FFT
    along kx, crop the image columns (:func:`crop_or_pad`), FFT back."""
    shift = dict(axes=-1)
    image = np.fft.fftshift(np.fft.ifft(np.fft.ifftshift(kspace, **shift), axis=-1, norm="ortho"), **shift)
    image = crop_or_pad(image, (kspace.shape[-2], columns))
    return np.fft.fftshift(np.fft.fft(np.fft.ifftshift(image, **shift), axis=-1, norm="ortho"), **shift)


def read_kspace(path, mask: str | None = None, key: str | None = None) -> KSpace:
    """Measured k-space from a CMRxRecon ``.mat``, an ISMRMRD/MRD ``.h5`` or our k-space ``.npz``, in the
    layout of :class:`KSpace` (docs/formats.md). ``mask``: a mask file the user named (CMRxRecon
    ``*_mask.mat``, or .npy/.npz); ``key``: the k-space variable of a .mat file."""
    path = check_readable(path, expected="a k-space file (.mat, .h5, .npz)", error=DataError)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _read_kspace_npz(path, mask)
    if name.endswith(".mat"):
        return read_cmrxrecon(path, mask, key)
    if name.endswith((".h5", ".mrd")):
        if mask is not None:
            raise UserError(f"--mask {mask}: an MRD file says itself which lines were acquired; drop --mask")
        return read_mrd(path)
    raise DataError(f"{path}: unsupported k-space file; expected a CMRxRecon .mat, an ISMRMRD/MRD .h5 or a k-space "
                    f".npz (python formats.py convert ... --kspace)")


# ----------------------------------------------------------------------------- raw k-space, a slice at a time
@dataclass(frozen=True)
class RawVolume:
    """A raw k-space file whose slices are read one at a time (:func:`read_kspace_slice`), as
    :func:`inspect_kspace` describes it from its headers alone."""
    path: Path
    kind: str  # 'cmrxrecon' (MATLAB v7.3) | 'mrd' (ISMRMRD/MRD .h5) | 'npz' (our k-space layout)
    variable: str  # the k-space variable of a .mat file, 'kspace' of an .npz, 'dataset/data' of an MRD file
    shape: tuple[int, int, int, int, int]  # [N, C, T, H, W]: slices, coils, frames, ky rows, kx columns

    def describe(self) -> str:
        count, coils, frames, height, width = self.shape
        return (f"{self.path} ({self.kind} {self.variable!r}): {count} slice(s), {coils} coil(s), {frames} frames "
                f"of {height} ky x {width} kx")


def inspect_kspace(path, key: str | None = None) -> RawVolume:
    """The slices of a raw k-space file, from its headers alone (nothing is read but headers): a
    CMRxRecon ``.mat`` (v7.3; ``key`` or the first of :data:`CMRXRECON_KSPACE`), an ISMRMRD/MRD ``.h5``
    or our k-space ``.npz`` (array ``kspace``); the layouts of :func:`read_kspace`."""
    path = check_readable(path, expected="a k-space file (.mat, .h5, .npz)", error=DataError)
    name = path.name.lower()
    if name.endswith(".npz"):
        _, shape, _ = array_header(path, "kspace")
        one_coil = {3: (1, 1, *shape), 4: (shape[0], 1, *shape[1:]), 5: tuple(shape)}
        if len(shape) not in one_coil:
            raise DataError(f"{path}: 'kspace' of shape {tuple(shape)}; expected [N, C, T, H, W]")
        return RawVolume(path, "npz", "kspace", one_coil[len(shape)])
    if name.endswith(".mat"):
        if not _is_hdf5(path):
            raise DataError(f"{path}: a MATLAB v5 file cannot be read a slice at a time; convert it: python formats.py "
                            f"convert {path} --kspace --out NEW.npz")
        variable, shape = _with_mat73_kspace(path, key, lambda item: item.shape)
        return RawVolume(path, "cmrxrecon", variable, _cmrxrecon_shape(shape, path, variable))
    if name.endswith((".h5", ".mrd")):
        return RawVolume(path, "mrd", "dataset/data", _with_mrd_heads(path, _mrd_shape))
    raise DataError(f"{path}: unsupported k-space file; expected a CMRxRecon .mat, an ISMRMRD/MRD .h5 or a k-space "
                    f".npz")


def read_kspace_slice(volume: RawVolume, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice ``index`` of ``volume``, read alone: its k-space ``[C, T, H, W]`` complex64 (centred, as
    :func:`read_kspace` places it) and the mask of the samples it holds ``[T, H, W]`` float32."""
    if volume.kind == "npz":
        kspace = read_array_item(volume.path, "kspace", index).reshape(volume.shape[1:])
    elif volume.kind == "cmrxrecon":
        def read(item):
            check_memory(str(volume.path), 4 * math.prod(volume.shape[1:]) * 8, f"slice {index} {volume.shape[1:]}")
            part = item[(slice(None), index) if item.ndim >= 4 else ()]  # (T, C, ky, kx), (T, ky, kx) or (ky, kx)
            return part["real"] + 1j * part["imag"] if part.dtype.names else part
        _, part = _with_mat73_kspace(volume.path, volume.variable, read)
        kspace = part.reshape(-1, *part.shape[-2:])[None] if part.ndim < 4 else part.transpose(1, 0, 2, 3)
    else:
        data = _with_mrd_heads(volume.path, lambda path, encoding, heads, item: _mrd_slice(path, encoding, heads, item,
                                                                                           index))
        kspace = data.kspace[0]
    kspace = check_kspace(kspace.reshape(volume.shape[1:])[None], f"{volume.path} slice {index}")[0]
    return kspace, measured_lines(kspace[None])[0]


def _with_mat73_kspace(path: Path, key, use):
    """``(variable, use(item))`` for the k-space dataset of a MATLAB v7.3 file (``key``, or the first of
    :data:`CMRXRECON_KSPACE`), reached through the hardened HDF5 path of :func:`_read_mat73`."""
    h5py = _optional("h5py", path, "MATLAB v7.3 .mat files")
    try:
        with h5py.File(path, "r") as file:
            items, numeric = _mat73_variables(file, path, h5py)
            name = _pick(numeric, key or CMRXRECON_KSPACE, path)
            item = items[name]
            _check_own_storage(item, path, name)
            if not item.dtype.names:
                raise DataError(f"{path}: variable {name!r} is real: k-space must be complex")
            check_declared(str(path), item.size * item.dtype.itemsize, path.stat().st_size,
                           f"variable {name!r} {item.shape[::-1]} of {item.dtype}")
            return name, use(item)
    except OSError as error:
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from None


def _cmrxrecon_shape(stored: tuple[int, ...], path: Path, variable: str) -> tuple[int, int, int, int, int]:
    """``[N, C, T, H, W]`` of a CMRxRecon variable stored (HDF5 order) as ``(frames, slices, coils, ky,
    kx)``, single-coil ``(frames, slices, ky, kx)`` or one frame ``(ky, kx)``."""
    if len(stored) == 5:
        frames, slices, coils, height, width = stored
        return slices, coils, frames, height, width
    if len(stored) == 4:
        frames, slices, height, width = stored
        return slices, 1, frames, height, width
    if len(stored) == 2:
        return 1, 1, 1, *stored
    raise DataError(f"{path}: variable {variable!r} {stored[::-1]}: expected MATLAB (kx, ky, coils, slices, frames), "
                    f"single-coil (kx, ky, slices, frames) or one frame (kx, ky)")


def _with_mrd_heads(path: Path, use):
    """``use(path, encoding, image heads, (data item, their rows))`` on an MRD file opened through the
    hardened HDF5 path: the header and the image acquisitions' headers are read, and ``use`` reads
    what it needs of the data item (every readout: :func:`read_mrd`; one slice's: :func:`_mrd_slice`)."""
    h5py = _optional("h5py", path, "ISMRMRD/MRD raw data")
    ismrmrd = _optional("ismrmrd", path, "ISMRMRD/MRD raw data")
    try:
        with h5py.File(path, "r") as file:
            xml_item, data_item = _mrd_items(file, h5py, path)
            encoding = _mrd_header(xml_item, ismrmrd, path)
            heads = _mrd_heads(data_item, ismrmrd, path)
            skipped = np.uint64(sum(1 << (getattr(ismrmrd, flag) - 1) for flag in MRD_SKIPPED))
            image = np.flatnonzero((heads["flags"] & skipped) == 0)
            if not image.size:
                raise DataError(f"{path}: no image acquisitions (only noise or calibration scans)")
            return use(path, encoding, heads[image], (data_item, image))
    except OSError as error:
        raise DataError(f"{path}: not a readable ISMRMRD/MRD (HDF5) file ({error})") from None


def _mrd_shape(path: Path, encoding, heads: np.ndarray, _) -> tuple[int, int, int, int, int]:
    """``[N, C, T, H, W]`` of an MRD file's image acquisitions as :func:`read_mrd` places them (the
    readout cropped to the reconstructed field of view where it is oversampled)."""
    idx = heads["idx"]
    frame_counter = "phase" if idx["phase"].any() or not idx["repetition"].any() else "repetition"
    height, width, _, fov_x, recon, _ = _mrd_geometry(path, encoding)
    columns = min(width, int(round(width * recon / fov_x)))
    return (len(np.unique(idx["slice"])), int(heads["active_channels"].max()), int(idx[frame_counter].max()) + 1,
            height, columns)


def _mrd_slice(path: Path, encoding, heads: np.ndarray, item, index: int) -> KSpace:
    """Slice ``index`` (the ``index``-th of the file's slice counters, in order) of an MRD file: its image
    readouts alone are read and placed by :func:`_place_readouts`."""
    data_item, rows = item
    counters = np.unique(heads["idx"]["slice"])
    chosen = np.flatnonzero(heads["idx"]["slice"] == counters[index])
    mine = heads[chosen].copy()
    mine["idx"]["slice"] = 0
    counts = mine["number_of_samples"].astype(np.int64) * mine["active_channels"]
    check_declared(str(path), int(counts.sum()) * 8, path.stat().st_size, f"slice {index}'s image acquisitions")
    samples = data_item.fields("data")[rows[chosen]]
    return _place_readouts(path, encoding, mine, samples)


def write_mat73(path: Path, variables: dict[str, np.ndarray]) -> None:
    """A MATLAB v7.3 file as MATLAB writes it (HDF5 after a 512-byte header, every array with its axes
    reversed, complex as a ``(real, imag)`` compound, of singles for complex64, a ``MATLAB_class``
    attribute), built in memory and written by :func:`cli.atomic_write` (never half a file, never over
    an existing file). ``variables``: arrays in MATLAB's axis order."""
    h5py = _optional("h5py", path, "MATLAB v7.3 .mat files")
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", userblock_size=MAT73_HEADER) as mat:
        for name, value in variables.items():
            stored, kind = np.ascontiguousarray(value.T), MAT73_CLASSES.get(value.dtype, "double")
            if np.iscomplexobj(value):
                part = np.float32 if value.dtype == np.complex64 else np.float64
                compound = np.empty(stored.shape, [("real", part), ("imag", part)])
                compound["real"], compound["imag"] = stored.real, stored.imag
                stored = compound
            mat.create_dataset(name, data=stored).attrs["MATLAB_class"] = np.bytes_(kind)
    content = bytearray(buffer.getvalue())
    content[:MAT73_HEADER] = b"MATLAB 7.3 MAT-file, written by cinerecon (formats.py), HDF5 schema 1.00 .".ljust(
        MAT73_HEADER, b" ")
    atomic_write(path, bytes(content), new=True)


MAT73_HEADER = 512  # bytes of MATLAB's text header before the HDF5 data of a v7.3 file
MAT73_CLASSES = {np.dtype(np.complex64): "single", np.dtype(np.float32): "single", np.dtype(np.uint8): "uint8"}


# ----------------------------------------------------------------------------- conforming
def resample_frames(cines: np.ndarray, frames: int) -> np.ndarray:
    """Resample ``[n, t, x, y]`` to ``frames`` frames spanning the same cardiac cycle.

    A cine is one periodic heartbeat, so the interpolation is periodic: output frame k sits at time
    ``k * t / frames`` (frame 0 stays frame 0) and the last frames blend back into the first. Linear
    interpolation between the two neighbouring frames is used rather than Fourier resampling: every
    output is a convex combination of measured frames, so magnitudes stay non-negative and within
    their measured range (no temporal ringing around the fast systolic motion). It smooths slightly
    and, when reducing frames, does not low-pass first; ``select_frames`` keeps measured frames instead.
    """
    total = cines.shape[1]
    if frames == total:
        return cines
    position = np.arange(frames) * total / frames
    before = np.floor(position).astype(int)
    weight = (position - before).astype(np.float32)[None, :, None, None]
    return (1 - weight) * cines[:, before] + weight * cines[:, (before + 1) % total]


def select_frames(cines: np.ndarray, frames: int, source="cines") -> np.ndarray:
    """Keep ``frames`` evenly spaced frames of ``[n, t, x, y]``: frame ``floor(k * t / frames)``."""
    total = cines.shape[1]
    if frames > total:
        raise DataError(f"{source}: cannot select {frames} frames from {total}; resample instead (drop --select)")
    return cines[:, np.arange(frames) * total // frames]


def crop_or_pad(array, size: tuple[int, int]):
    """Centre crop and/or zero-pad the last two axes of a numpy array to ``size`` (rows, columns).

    The pixel at ``(H // 2, W // 2)`` (the FFT centre of sampling.fft2c) moves to ``(h // 2, w // 2)``,
    so padding then cropping back returns the original, in the image or in k-space.
    """
    index = [slice(None)] * array.ndim
    padding = [(0, 0)] * array.ndim
    for axis, new in zip((array.ndim - 2, array.ndim - 1), size):
        old = array.shape[axis]
        if new <= old:
            start = old // 2 - new // 2
            index[axis] = slice(start, start + new)
        else:
            before = new // 2 - old // 2
            padding[axis] = (before, new - old - before)
    array = array[tuple(index)]
    return np.pad(array, padding) if any(any(p) for p in padding) else array


def conform(cines: np.ndarray, frames: int | None = None, size: tuple[int, int] | None = None,
            select: bool = False, source="cines") -> tuple[np.ndarray, list[str]]:
    """Crop/pad float32/complex64 ``[n, t, x, y]`` to ``size`` and resample (or ``select``) to ``frames``;
    returns the result and notes on what changed."""
    notes = []
    _, total, height, width = cines.shape
    if size is not None and size != (height, width):
        cines = crop_or_pad(cines, size)
        notes.append(f"size {height}x{width} -> {size[0]}x{size[1]} (centre crop/zero-pad)")
    if frames is not None and frames != total:
        if select:
            cines = select_frames(cines, frames, source)
            notes.append(f"frames {total} -> {frames} (evenly spaced frames selected)")
        else:
            cines = resample_frames(cines, frames)
            notes.append(f"frames {total} -> {frames} (periodic linear interpolation)")
    return cines, notes


# ----------------------------------------------------------------------------- convert command
def save_npz(path, **arrays) -> None:
    """``np.savez`` to a new file through :func:`cli.atomic_write`: never half a file at ``path``, and
    never over a file that appeared there since :func:`check_output`."""
    atomic_write(path, lambda file: np.savez(file, **arrays), new=True)


def check_output(path, suffixes: tuple[str, ...] = (".npz",)) -> Path:
    """A new path ending in one of ``suffixes`` in an existing folder (an existing file is never
    overwritten), whose stale temporary files, left by a killed command, are removed."""
    path = Path(path)
    check_name_length(path)
    if not path.name.lower().endswith(suffixes):
        raise UserError(f"{path}: the output must be a {' or '.join(suffixes)} file")
    if path.exists():
        raise UserError(f"{path}: already exists; choose another --out or remove it first")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such folder for the output")
    remove_stale_temporaries(path)
    return path


def _same(values: dict, what: str, option: str) -> None:
    """Refuse inputs that differ in ``what`` (values: source -> value) when ``option`` is not given."""
    if len(set(values.values())) > 1:
        detail = ", ".join(f"{value} in {source}" for source, value in list(values.items())[:4])
        raise UserError(f"the inputs have different {what} ({detail}); choose one with {option}")


def parse_box(text: str, shape: tuple[int, ...]) -> np.ndarray:
    """``--heart_box=row0,row1,col0,col1`` as ``[N, 4]`` for the ``[N, T, H, W]`` cines of ``shape``."""
    try:
        box = np.array([int(part) for part in str(text).split(",")])
    except ValueError:
        raise UserError(f"--heart_box={text}: expected four integers row0,row1,col0,col1") from None
    if box.shape != (4,):
        raise UserError(f"--heart_box={text}: expected four integers row0,row1,col0,col1")
    return check_boxes(box, shape[0], shape[2:], f"--heart_box={text}")


def convert(*inputs,  # files or DICOM folders (formats may be mixed)
            out: str,  # the .npz to write (never overwritten)
            frames: int | None = None,  # frames per cine (periodic linear interpolation); None: as read
            size: tuple[int, int] | None = None,  # image size SIZE or HxW: centre crop/zero-pad; None: as read
            key: str | None = None,  # array name in .mat/.npz files; None: 'dataset' or the only one
            axes: str | None = None,  # axis order of .mat/.npy/.npz arrays, e.g. xyt or xytn; None: ntxy / txy
            select: bool = False,  # with --frames: keep evenly spaced measured frames instead of resampling
            heart_box: str | None = None,  # 'row0,row1,col0,col1': every cine's heart box, written pixels; None: none
            # measured k-space
            kspace: bool = False,  # the inputs are raw k-space (CMRxRecon .mat, MRD .h5, k-space .npz): write k-space
            mask: str | None = None,  # with --kspace: the one input's mask file (CMRxRecon *_mask.mat, .npy/.npz)
            log=print) -> np.ndarray:
    """Read NIfTI 4-D volumes (one cine per slice), DICOM folders (one slice each), .mat (v5, v7.3),
    .npy or .npz cines; crop/pad and resample them in time (:func:`conform`); normalise each cine to
    peak magnitude 1 and write one .npz holding 'dataset' [N, T, H, W] (complex64 if any input is
    complex) and 'subject' [N] (the input each cine came from: train.py splits by it, so slices of
    one input never land in two splits) and, with ``heart_box``, 'heart_box' [N, 4] (the region
    scored by the heart-box metrics of train.py and compare.py). Returns the dataset written.
    With ``kspace``, :func:`convert_kspace` instead.
    """
    if kspace:
        given = [f"--{name}" for name, value in (("frames", frames), ("size", size), ("axes", axes),
                                                  ("select", select), ("heart_box", heart_box)) if value]
        if given:
            raise UserError(f"{', '.join(given)}: measured k-space is written as acquired; drop them with --kspace")
        return convert_kspace(inputs, check_output(out), key, mask, log)
    if mask is not None:
        raise UserError("--mask is the mask of measured k-space: give it with --kspace")
    if select and frames is None:
        raise UserError("--select needs --frames")
    out = check_output(out)
    parts = {}
    for source in map(Path, inputs):
        cines, description = read_cines(source, key, axes)
        cines = check_cines(cines, str(source))
        read = f"{len(cines)} cine(s) of {cines.shape[1]} frames of {cines.shape[2]}x{cines.shape[3]}"
        shape = (len(cines), frames or cines.shape[1], *(size or cines.shape[2:]))
        check_memory(str(source), 3 * math.prod(shape) * cines.itemsize,  # conformed, concatenated, normalised
                     f"{shape[0]} cine(s) of {shape[1]} frames of {shape[2]}x{shape[3]}")
        cines, notes = conform(cines, frames, size, select, source)
        parts[source] = check_cines(cines, str(source))  # cropping may leave a cine without signal
        log(f"{source}: {description}: {read}" + "".join(f"; {note}" for note in notes))
    _same({s: c.shape[1] for s, c in parts.items()}, "frame counts", "--frames")
    _same({s: "x".join(map(str, c.shape[2:])) for s, c in parts.items()}, "image sizes", "--size")
    kinds = {np.iscomplexobj(c) for c in parts.values()}
    dataset = normalize(np.concatenate([c.astype(np.complex64) if kinds == {True, False} else c
                                        for c in parts.values()]))
    subjects = np.concatenate([np.full(len(c), str(source)) for source, c in parts.items()])  # [N]
    boxes = {} if heart_box is None else {"heart_box": parse_box(heart_box, dataset.shape)}
    save_npz(out, dataset=dataset, subject=subjects, **boxes)
    kind = "complex" if np.iscomplexobj(dataset) else "magnitude"
    log(f"wrote {out}: dataset [{', '.join(map(str, dataset.shape))}] {dataset.dtype} ({kind}), every cine "
        f"scaled to peak magnitude 1" + ("; magnitude inputs made complex" if len(kinds) > 1 else ""))
    return dataset


def convert_kspace(inputs, out: Path, key: str | None, mask: str | None, log=print) -> np.ndarray:
    """Read measured k-space (:func:`read_kspace`) and write it to ``out`` in our k-space layout:
    ``kspace`` ``[N, C, T, H, W]`` complex64 (zero off the mask, in the file's units), ``mask``
    ``[N, T, H, W]`` float32, ``subject`` ``[N]`` (the input of each cine) and, where the inputs hold
    them, ``sensitivities`` ``[N, C, H, W]`` and ``pixel_size`` ``[2]`` (mm). Returns the k-space."""
    if mask is not None and len(inputs) != 1:
        raise UserError(f"--mask {mask} is the mask of one input; convert {len(inputs)} inputs one at a time")
    parts = {}
    for source in map(Path, inputs):
        parts[source] = read_kspace(source, mask, key)
        log(f"{source}: {parts[source].description}")
    for what, value in (("k-space shapes (coils, frames, ky, kx)", lambda d: d.kspace.shape[1:]),
                        ("pixel sizes", lambda d: None if d.pixel_size is None else tuple(d.pixel_size.tolist())),
                        ("sensitivities (held by some only)", lambda d: d.sensitivities is None)):
        found = {source: value(data) for source, data in parts.items()}
        if len(set(found.values())) > 1:
            detail = ", ".join(f"{v} in {source}" for source, v in list(found.items())[:4])
            raise UserError(f"the inputs have different {what} ({detail}); convert them separately")
    first = next(iter(parts.values()))
    kspace = np.concatenate([d.kspace * d.mask[:, None] for d in parts.values()])  # [N, C, T, H, W]
    extra = {} if first.pixel_size is None else {"pixel_size": first.pixel_size}
    if first.sensitivities is not None:
        extra["sensitivities"] = np.concatenate([d.sensitivities for d in parts.values()])
    subjects = np.concatenate([np.full(len(d.kspace), str(source)) for source, d in parts.items()])  # [N]
    save_npz(out, kspace=kspace, mask=np.concatenate([d.mask for d in parts.values()]), subject=subjects, **extra)
    log(f"wrote {out}: kspace [{', '.join(map(str, kspace.shape))}] complex64 (N, C, T, H, W), mask, subject"
        + "".join(f", {name}" for name in extra))
    return kspace


def image_size(text: str) -> tuple[int, int]:
    """``192`` -> (192, 192); ``192x160`` -> (192, 160)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"expected SIZE or HEIGHTxWIDTH (e.g. 192 or 192x160), got {text!r}")
    return int(parts[0]), int(parts[-1])


USAGE = ("usage: python formats.py convert INPUT [INPUT ...] --out=FILE [--key=value ...]; "
         "python formats.py convert --help lists the options")


def main(argv: list[str]) -> None:
    """``python formats.py convert ...``: the module's one command."""
    if argv[:1] != ["convert"]:
        if argv[:1] not in (["--help"], ["-h"]):
            raise UserError(USAGE)
        print(USAGE)
        return
    run_command(convert, argv[1:], prog="python formats.py convert", exclude=("log",),
                parsers={"frames": positive, "size": image_size})


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        main(sys.argv[1:])
