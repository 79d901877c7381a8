"""Weight images: distcb draws a weight exactly as Keras's TensorBoard does (its pixels, read
back from Keras's own event file), and the images the chief sends cross the wire intact
(malformed ones are refused by the decoder: tests/protocol/test_wire_bounds.py)."""

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distcb.protocol.messages import EpochEnd, decode_from_worker, encode
from distcb.protocol.weight_images import encode_png, image_batch, weight_images
from distcb.protocol.worker_data import EpochExtras

RNG = np.random.default_rng(0)
WEIGHTS = {
    "bias": RNG.uniform(-0.2, 1.2, size=(5,)),
    "tall_kernel": RNG.uniform(0, 1, size=(6, 2)),
    "wide_kernel": RNG.uniform(0, 1, size=(2, 6)),
    "column_kernel": RNG.uniform(0, 1, size=(4, 1)),  # squeezes to a vector
    "conv1d_kernel": RNG.uniform(0, 1, size=(3, 2, 4)),  # one image per filter
    "conv2d_rgb_kernel": RNG.uniform(0, 1, size=(3, 3, 3, 5)),  # 5 channels: not drawn
    "conv2d_kernel": RNG.uniform(0, 1, size=(2, 3, 1, 4)),  # squeezes to 3-D
    "four_d_rgb": RNG.uniform(-1, 2, size=(4, 2, 3, 3)),  # 4 images of 2 x 3 RGB, 3 kept
    "with_nan": np.array([[0.5, np.nan, np.inf], [-np.inf, 1.0, 0.25]]),
    "scalar": np.array([[0.5]]),  # squeezes to a scalar: not drawn
}


def keras_images(tmp_path) -> dict[str, list[np.ndarray]]:
    """What Keras's own TensorBoard draws for WEIGHTS: tag -> decoded PNG images."""
    import keras
    import tensorflow as tf

    theirs = keras.callbacks.TensorBoard(str(tmp_path), write_graph=False)
    theirs.set_model(keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)]))
    with theirs._train_writer.as_default():
        for name, values in WEIGHTS.items():
            theirs._log_weight_as_image(values.astype("float32"), name, 0)
    theirs._train_writer.close()
    acc = EventAccumulator(str(tmp_path / "train"), size_guidance={"tensors": 0}).Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:
        (event,) = acc.Tensors(tag)
        width, height, *pngs = event.tensor_proto.string_val
        images = [tf.io.decode_png(png).numpy() for png in pngs]
        assert all(image.shape[:2] == (int(height), int(width)) for image in images)
        out[tag] = images
    return out


def test_images_are_keras_pixels(tmp_path):
    import tensorflow as tf

    expected = keras_images(tmp_path)
    message = EpochEnd(rank=0, epoch=0, logs={}, extras=EpochExtras(images=weight_images(WEIGHTS)))
    back = decode_from_worker(encode(message))
    assert isinstance(back, EpochEnd)
    decoded = {image.name: image for image in back.extras.images}
    assert sorted(decoded) == sorted(expected)
    assert "conv2d_rgb_kernel" not in decoded
    assert "scalar" not in decoded
    for name, images in expected.items():
        ours = [tf.io.decode_png(png).numpy() for png in decoded[name].pngs]
        assert len(ours) == len(images) <= 3
        for a, b in zip(images, ours, strict=True):
            np.testing.assert_array_equal(b, a, err_msg=name)
        assert (decoded[name].height, decoded[name].width) == images[0].shape[:2]


def test_channels_first_splits_the_first_axis():
    kernel = RNG.uniform(0, 1, size=(4, 3, 2))
    assert image_batch(kernel, channels_last=True).shape == (2, 4, 3, 1)
    assert image_batch(kernel, channels_last=False).shape == (4, 3, 2, 1)


def test_png_encoder_round_trips_through_pillow():
    from io import BytesIO

    from PIL import Image

    for channels in (1, 3, 4):
        pixels = RNG.integers(0, 256, size=(5, 7, channels), dtype=np.uint8)
        back = np.asarray(Image.open(BytesIO(encode_png(pixels))))
        np.testing.assert_array_equal(back.reshape(pixels.shape), pixels)
    with pytest.raises(ValueError, match=r"uint8 array \[height, width, 1\|3\|4\]"):
        encode_png(np.zeros((2, 2, 2), np.uint8))
