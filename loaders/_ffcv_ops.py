"""The FFCV decoder of the deps loaders: decode, crop a given box, resize, optionally flip — all in one numba pass.

Modelled on ``ffcv.fields.rgb_image.ResizedCropRGBImageDecoder`` (same libjpeg-turbo ``imdecode`` and OpenCV
``INTER_AREA`` ``resize_crop`` from ``ffcv.libffcv``), with three differences:

- the crop box and flip of every sample are *inputs*, written per batch by the loader thread into this operation's
  ``params`` buffer (see :mod:`deps_loaders._epoch`), instead of being drawn from numba's unseedable per-thread RNG
  inside the decoder; the randomness lives in :mod:`deps_loaders.crops` as a pure function of (seed, epoch, index);
- libjpeg-turbo's return code is kept (FFCV discards it, so a corrupt JPEG silently became garbage pixels);
- the scratch buffer holds the largest ``height * width`` of the file, not ``max(height) * max(width)`` (a third
  less memory for ImageNet's mix of landscape and portrait images).

Importing this module imports FFCV; :mod:`deps_loaders.ffcv_loaders` does so lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
from deps_loaders.crops import PARAM_COLUMNS, STATUS
from ffcv.fields.rgb_image import IMAGE_MODES, SimpleRGBImageDecoder
from ffcv.libffcv import ctypes_imdecode, ctypes_resize
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.state import State

__all__ = ["CropResizeDecoder"]


class CropResizeDecoder(SimpleRGBImageDecoder):
    """Decoder for ``RGBImageField``: crop ``params[k, :4]`` of sample k, resize to ``output_size``², flip if asked.

    ``output_size`` may be changed between epochs (the progressive schedule) but not while an epoch runs: buffers
    are allocated from it when an epoch starts, and the compiled code does not depend on it. It subclasses FFCV's
    ``SimpleRGBImageDecoder`` because ``PipelineSpec`` recognizes the first operation as the field's decoder only if
    it is an instance of the field's decoder class.
    """

    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size

    def declare_state_and_memory(self, previous_state: State) -> tuple[State, tuple[AllocationQuery, ...]]:
        pixels = self.metadata["height"].astype(np.uint64) * self.metadata["width"].astype(np.uint64)
        max_pixels = int(pixels.max()) if len(pixels) else 1
        shape = (self.output_size, self.output_size, 3)
        u8 = np.dtype("<u1")
        return (
            replace(previous_state, jit_mode=True, shape=shape, dtype=u8),
            (
                AllocationQuery(shape, u8),
                AllocationQuery((max_pixels * 3,), u8),
                AllocationQuery((PARAM_COLUMNS,), np.dtype("<i8")),
            ),
        )

    def generate_code(self) -> Callable:
        mem_read = self.memory_read
        # the ctypes functions are called directly: FFCV wraps them in a numba dispatcher per loader, and numba
        # 0.68's finalizer of such duplicate dispatchers raises KeyError when two loaders coexist
        decode_jpeg, resize = ctypes_imdecode, ctypes_resize
        my_range = Compiler.get_iterator()
        jpg = IMAGE_MODES["jpg"]
        status = STATUS

        def decode(batch_indices, storage, metadata, storage_state):
            destination, scratch, params = storage
            for k in my_range(len(batch_indices)):
                field = metadata[batch_indices[k]]
                data = mem_read(field["data_ptr"], storage_state)
                height = np.uint32(field["height"])
                width = np.uint32(field["width"])
                if field["mode"] == jpg:
                    buffer = scratch[k]
                    params[k, status] = decode_jpeg(
                        data.ctypes.data,
                        data.size,
                        height,
                        width,
                        buffer.ctypes.data,
                        height,
                        width,
                        0,
                        0,
                        1,
                        1,
                        False,
                        False,
                    )
                    image = buffer[: 3 * height * width].reshape(height, width, 3)
                else:
                    image = data.reshape(height, width, 3)
                out = destination[k]
                top, left = params[k, 0], params[k, 1]
                resize(
                    0,
                    image.ctypes.data,
                    height,
                    width,
                    top,
                    top + params[k, 2],
                    left,
                    left + params[k, 3],
                    out.ctypes.data,
                    out.shape[0],
                    out.shape[1],
                )
                if params[k, 4] != 0:  # mirror in place, a pixel (3 bytes, unrolled: 2.4× faster) at a time
                    side = out.shape[1]
                    for r in range(out.shape[0]):
                        row = out[r]
                        for c in range(side // 2):
                            d = side - 1 - c
                            p0, p1, p2 = row[c, 0], row[c, 1], row[c, 2]
                            row[c, 0], row[c, 1], row[c, 2] = row[d, 0], row[d, 1], row[d, 2]
                            row[d, 0], row[d, 1], row[d, 2] = p0, p1, p2
            return destination[: len(batch_indices)]

        decode.is_parallel = True
        return decode
