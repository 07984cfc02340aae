"""Reading and checking a .beton file before FFCV touches it.

FFCV's ``Reader`` trusts the file: a truncated .beton is memory-mapped and decoded past its end (garbage images or a
crash in libjpeg-turbo), a file whose writer was interrupted (the header is written last) reads as zero samples or
fails deep inside NumPy, and a file with other fields fails when the pipeline is compiled. :func:`inspect_beton`
checks the layout (header, field table, metadata, allocation table, and that every sample's data lies inside the data
region) and the fields the loaders expect — ``image`` (``RGBImageField``) and ``label`` (``IntField``), the layout of
ffcv-imagenet's ``write_imagenet.py`` — and raises one :class:`BetonError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import numpy as np
from deps_loaders._ffcv import ffcv

__all__ = ["BetonError", "BetonInfo", "inspect_beton"]

IMAGE_FIELD = "image"
LABEL_FIELD = "label"


class BetonError(ValueError):
    """A .beton file is missing, malformed, truncated or lacks the expected fields."""


@attrs.frozen(eq=False)
class BetonInfo:
    """What the loaders need to know about a checked .beton file (arrays are per sample, in file order)."""

    path: Path
    num_samples: int
    file_bytes: int
    heights: np.ndarray
    widths: np.ndarray
    jpeg: np.ndarray  # bool: stored as JPEG (else raw pixels)
    labels: np.ndarray

    @property
    def num_classes(self) -> int:
        """``max(label) + 1``: the smallest class count consistent with the labels."""
        return int(self.labels.max()) + 1 if self.num_samples else 0

    def check_labels(self, num_classes: int) -> None:
        """Raise :class:`BetonError` if any label lies outside ``[0, num_classes)``."""
        bad = (self.labels < 0) | (self.labels >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise BetonError(
                f"{self.path}: label {int(self.labels[i])} of sample {i} is outside [0, {num_classes}) "
                f"({int(bad.sum())} samples out of range)"
            )


def inspect_beton(path: str | os.PathLike) -> BetonInfo:
    """Check ``path`` is a complete .beton with ``image`` and ``label`` fields; return its per-sample metadata."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such .beton file")
    if not path.is_file():
        raise BetonError(f"{path}: not a file (a .beton dataset is a single file)")
    types = ffcv("types")
    size = path.stat().st_size
    header_t, field_t, alloc_t = types.HeaderType, types.FieldDescType, types.ALLOC_TABLE_TYPE
    if size < header_t.itemsize:
        raise BetonError(f"{path}: {size} bytes is too short for a .beton header (truncated or not a .beton)")
    header = np.fromfile(path, dtype=header_t, count=1)[0]
    version = int(header["version"])
    if version != types.CURRENT_VERSION:
        raise BetonError(f"{path}: not a .beton file of format version {types.CURRENT_VERSION} (header says {version})")
    num_samples, num_fields = int(header["num_samples"]), int(header["num_fields"])
    alloc_ptr = int(header["alloc_table_ptr"])
    metadata_start = header_t.itemsize + num_fields * field_t.itemsize
    if alloc_ptr == 0:
        raise BetonError(f"{path}: incomplete .beton (no allocation table; was the writer interrupted?)")
    if alloc_ptr > size or (size - alloc_ptr) % alloc_t.itemsize:
        raise BetonError(
            f"{path}: truncated .beton ({size} bytes; its allocation table starts at byte {alloc_ptr} and must end the"
            " file)"
        )
    if size < metadata_start:
        raise BetonError(f"{path}: truncated .beton (the field table ends past the {size} bytes of the file)")
    fields = np.fromfile(path, dtype=field_t, count=num_fields, offset=header_t.itemsize)
    names = [bytes(f["name"]).split(b"\0", 1)[0].decode("ascii", "replace") for f in fields]
    handlers = dict(zip(names, (types.TYPE_ID_HANDLER.get(int(f["type_id"])) for f in fields)))
    fields_mod = ffcv("fields")
    expected = {IMAGE_FIELD: fields_mod.RGBImageField, LABEL_FIELD: fields_mod.IntField}
    if any(handlers.get(name) is not cls for name, cls in expected.items()):
        found = ", ".join(f"{n!r} ({h.__name__ if h else 'custom'})" for n, h in handlers.items()) or "none"
        raise BetonError(f"{path}: expected fields 'image' (RGBImageField) and 'label' (IntField), found {found}")
    metadata_t = types.get_metadata_type([h() for h in handlers.values()])
    if metadata_start + num_samples * metadata_t.itemsize > alloc_ptr:
        raise BetonError(f"{path}: truncated or corrupt .beton (metadata of {num_samples} samples overruns the data)")
    metadata = np.fromfile(path, dtype=metadata_t, count=num_samples, offset=metadata_start)
    if len(metadata) != num_samples:
        raise BetonError(f"{path}: truncated .beton (metadata of {len(metadata)} of {num_samples} samples)")
    alloc = np.fromfile(path, dtype=alloc_t, offset=alloc_ptr)
    image = metadata[f"f{names.index(IMAGE_FIELD)}"]
    labels = metadata[f"f{names.index(LABEL_FIELD)}"].astype(np.int64)
    _check_data(path, image, alloc, metadata_start + num_samples * metadata_t.itemsize, alloc_ptr)
    return BetonInfo(
        path=path,
        num_samples=num_samples,
        file_bytes=size,
        heights=image["height"].astype(np.int64),
        widths=image["width"].astype(np.int64),
        jpeg=image["mode"] == 0,
        labels=labels,
    )


def _check_data(path: Path, image: np.ndarray, alloc: np.ndarray, data_start: int, data_end: int) -> None:
    if len(image) == 0:
        raise BetonError(f"{path}: the .beton contains no samples")
    if (image["height"] == 0).any() or (image["width"] == 0).any():
        raise BetonError(f"{path}: corrupt .beton (an image of size 0)")
    order = np.argsort(alloc["ptr"])
    ptrs, sizes = alloc["ptr"][order], alloc["size"][order]
    if len(ptrs) and (int(ptrs[0]) < data_start or int((ptrs + sizes).max()) > data_end):
        raise BetonError(f"{path}: corrupt .beton (sample data outside the data region)")
    where = np.searchsorted(ptrs, image["data_ptr"])
    found = (where < len(ptrs)) & (ptrs[np.minimum(where, len(ptrs) - 1)] == image["data_ptr"])
    if not found.all():
        i = int(np.argmin(found))
        raise BetonError(f"{path}: corrupt .beton (image data of sample {i} is not in the allocation table)")
    raw = image["mode"] == 1
    expected = image["height"].astype(np.uint64) * image["width"].astype(np.uint64) * np.uint64(3)
    if (raw & (sizes[where] < expected)).any():
        i = int(np.argmax(raw & (sizes[where] < expected)))
        raise BetonError(f"{path}: corrupt .beton (raw image of sample {i} is shorter than its size)")
