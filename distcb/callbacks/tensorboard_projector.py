"""TensorBoard's embedding projector, as Keras's TensorBoard sets it up (``embeddings_freq``).

Keras writes ``<log_dir>/projector_config.pbtxt`` with one ``embeddings`` entry
per ``Embedding`` layer among the model's layers (all named
``layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE``, Keras's fixed
name, with the ``metadata_path`` that ``embeddings_metadata`` gives the layer),
and every ``embeddings_freq`` epochs saves the model's weights to
``<log_dir>/train/keras_embedding.ckpt-<epoch>`` (``.weights.h5`` appended for a
Keras 3 model; tf_keras writes a TensorFlow checkpoint there).

In a plain ``fit`` the callback does both; in a distcb job the chief reports
its embedding layers (``extras["embedding_layers"]``) and saves the weights
file, and the coordinator's TensorBoard writes the config. Nothing here imports
Keras or protobuf: the config is protobuf text format, written directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

CONFIG_FILE = "projector_config.pbtxt"
TENSOR_NAME = "layer_with_weights-0/embeddings/.ATTRIBUTES/VARIABLE_VALUE"


def embedding_layer_names(model: Any) -> list[str]:
    """Names of the model's top-level layers that are Keras (3 or 2) ``Embedding`` layers."""
    names = []
    for layer in getattr(model, "layers", ()):
        if any(
            klass.__name__ == "Embedding" and klass.__module__.startswith(("keras", "tf_keras"))
            for klass in type(layer).__mro__
        ):
            names.append(str(layer.name))
    return names


def checkpoint_path(train_dir: str, epoch: int, keras3: bool) -> str:
    """Where the embeddings of `epoch` are saved."""
    path = os.path.join(train_dir, f"keras_embedding.ckpt-{epoch}")
    return f"{path}.weights.h5" if keras3 else path


def _quote(text: str) -> str:
    """A string in protobuf text format, as protobuf writes it (C escapes; UTF-8 kept)."""
    escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"', "'": "\\'", "\\": "\\\\"}
    out = []
    for char in text:
        if char in escapes:
            out.append(escapes[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\{ord(char):03o}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def config_text(layers: Iterable[str], metadata: str | Mapping[str, str] | None) -> str:
    """The projector config for these embedding layers, as Keras writes it.

    Args:
        layers: the embedding layers' names, in the model's order.
        metadata: one metadata path for every layer, or layer name -> path.

    Raises:
        ValueError: `metadata` names a layer that is not among `layers`.
    """
    layers = list(layers)
    if isinstance(metadata, Mapping):
        unknown = sorted(set(metadata) - set(layers))
        if unknown:
            raise ValueError(
                "Unrecognized `Embedding` layer names passed to TensorBoard's "
                f"embeddings_metadata argument: {unknown}. The model's Embedding layers are: "
                f"{layers or 'none'}."
            )
    lines = []
    for name in layers:
        lines += ["embeddings {", f"  tensor_name: {_quote(TENSOR_NAME)}"]
        path = metadata if isinstance(metadata, str) else (metadata or {}).get(name)
        if path is not None:
            lines.append(f"  metadata_path: {_quote(str(path))}")
        lines.append("}")
    return "".join(f"{line}\n" for line in lines)


def write_config(log_dir: str, layers: Iterable[str], metadata: Any) -> str:
    """Write ``<log_dir>/projector_config.pbtxt``; returns its path."""
    text = config_text(layers, metadata)
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, CONFIG_FILE)
    with open(path, "w") as file:
        file.write(text)
    return path
