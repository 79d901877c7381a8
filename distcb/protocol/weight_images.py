"""Weights drawn as images, Keras's way: computed where the weights are, written by TensorBoard.

``TensorBoard(write_images=True)`` draws each weight as an image at the epochs
where weight histograms are written. In a plain ``fit`` the callback draws the
model's weights itself; in a distcb job the chief draws its weights with
:func:`weight_images` and sends them in ``extras.images`` of its epoch-end
message (``WeightImage``, in ``distcb.protocol.worker_data``, which bounds and
checks them), and the coordinator's TensorBoard writes them.

The drawing follows Keras 3 (and tf_keras): the weight is squeezed; a vector
becomes one ``1 x n`` image; a matrix one image, transposed to be wider than
tall; a 3-D kernel one image per slice of its last axis (``channels_last``) or
first axis; a 4-D weight whose last axis has 1, 3 or 4 entries is taken as
``[images, height, width, channels]``; anything else is not drawn. Pixels are
``tf.image.convert_image_dtype(w, uint8, saturate=True)``: ``w * 255.5``
clipped to ``[0, 255]``; the first three images of a weight are kept, as
``tf.summary.image``'s ``max_outputs``. Only numpy and zlib are needed.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from distcb.protocol.worker_data import PNG_SIGNATURE, WeightImage

__all__ = ["WeightImage", "encode_png", "image_batch", "weight_images"]

MAX_OUTPUTS = 3
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)


def image_batch(values: Any, channels_last: bool = True) -> np.ndarray | None:
    """A weight as Keras draws it: ``uint8 [images, height, width, channels]``, or None.

    Args:
        values: the weight (anything ``np.asarray`` takes).
        channels_last: the model's image data format (3-D kernels are split along
            their last axis when True, their first axis otherwise).
    """
    w = np.squeeze(np.asarray(values, dtype=np.float32))
    if w.ndim == 1:
        w = w.reshape(1, w.shape[0], 1, 1)
    elif w.ndim == 2:
        if w.shape[0] > w.shape[1]:
            w = w.T
        w = w.reshape(1, w.shape[0], w.shape[1], 1)
    elif w.ndim == 3:
        if channels_last:
            w = np.transpose(w, (2, 0, 1))
        w = w.reshape(w.shape[0], w.shape[1], w.shape[2], 1)
    if w.ndim != 4 or w.shape[-1] not in _COLOR_TYPES or 0 in w.shape:
        return None
    scaled = np.nan_to_num(w * np.float32(255.5), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def encode_png(image: np.ndarray) -> bytes:
    """A ``uint8 [height, width, channels]`` array (1, 3 or 4 channels) as PNG bytes.

    Raises:
        ValueError: another shape or dtype.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in _COLOR_TYPES:
        raise ValueError(
            f"encode_png needs a uint8 array [height, width, 1|3|4], received {image.dtype} "
            f"{image.shape}."
        )
    height, width, channels = image.shape
    rows = np.ascontiguousarray(image).reshape(height, width * channels)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )


def weight_images(
    named_arrays: Mapping[str, Any], channels_last: bool = True, max_outputs: int = MAX_OUTPUTS
) -> tuple[WeightImage, ...]:
    """Draw weights as images, for ``extras.images``.

    Args:
        named_arrays: weight path -> the weight's values; weights Keras does not
            draw are left out.
        channels_last: the model's image data format.
        max_outputs: images kept per weight.
    """
    images = []
    for name, values in named_arrays.items():
        batch = image_batch(values, channels_last)
        if batch is None:
            continue
        pngs = tuple(encode_png(image) for image in batch[:max_outputs])
        images.append(
            WeightImage(str(name), width=int(batch.shape[2]), height=int(batch.shape[1]), pngs=pngs)
        )
    return tuple(images)
