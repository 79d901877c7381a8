"""The chief interprets every worker request the coordinator's callbacks declared, each at
its own epochs, from a real Keras 3 model, and what it sends crosses the wire."""

from __future__ import annotations

import os

import pytest

from distcb.keras.chief import ChiefWork
from distcb.protocol.messages import EpochEnd, decode_from_worker, encode
from distcb.protocol.worker_data import (
    EmbeddingsRequest,
    EpochExtras,
    HistogramRequest,
    ModelJsonRequest,
)


def test_each_request_is_honoured_at_its_own_epochs(tmp_path):
    keras = pytest.importorskip("keras")
    model = keras.Sequential(
        [keras.Input((3,), dtype="int32"), keras.layers.Embedding(10, 2), keras.layers.Dense(1)]
    )
    model.compile("sgd", "mse")
    requests = (
        HistogramRequest(every_epochs=2),
        HistogramRequest(every_epochs=3, images=True),
        ModelJsonRequest(),
        EmbeddingsRequest(every_epochs=4, directory=str(tmp_path / "train")),
    )
    chief = ChiefWork(model, requests, max_profile_bytes=1 << 20)
    sent: list[EpochExtras] = []
    for epoch in range(5):
        message = EpochEnd(rank=0, epoch=epoch, logs={}, extras=chief.epoch_extras(epoch))
        back = decode_from_worker(encode(message))
        assert isinstance(back, EpochEnd)
        sent.append(back.extras)
    chief.close()

    assert [bool(e.histograms) for e in sent] == [True, False, True, True, True]
    assert [bool(e.images) for e in sent] == [True, False, False, True, False]
    assert [e.model_json is not None for e in sent] == [True, False, False, False, False]
    assert sent[0].embedding_layers == (model.layers[0].name,)
    assert all(e.embedding_layers is None for e in sent[1:])
    assert all(e.iterations == 0 for e in sent)  # never trained: the optimizer's count
    saved = sorted(os.listdir(tmp_path / "train"))
    assert saved == ["keras_embedding.ckpt-0.weights.h5", "keras_embedding.ckpt-4.weights.h5"]
