"""Aggregated metrics never invent an improvement: ModelCheckpoint and EarlyStopping on the
coordinator, 2 scripted workers whose validation accuracies have the same mean every epoch."""

from __future__ import annotations

import numpy as np

from distcb.callbacks import EarlyStopping, ModelCheckpoint
from distcb.protocol.decisions import SaveModel
from distcb.testing import simulate


def test_equal_means_are_no_improvement(tmp_path):
    # Each replica validates on the same 70 samples; the hits differ, their sum does not
    # (57 + 57 = 56 + 58 = 44 + 70 = 50 + 64). The mean of the float32 logs of 44/70 and
    # 70/70 exceeds float32(57/70) by 3e-8: before the fix, "improved from 0.81429 to 0.81429".
    hits = [(57, 57), (56, 58), (44, 70), (50, 64), (45, 69)]
    epoch_logs = [
        [{"loss": 0.5, "val_accuracy": float(np.float32(h / 70))} for h in pair] for pair in hits
    ]
    checkpoint = ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_accuracy", mode="max", save_best_only=True
    )
    stopping = EarlyStopping(monitor="val_accuracy", mode="max", patience=3)
    result = simulate(
        [checkpoint, stopping],
        epoch_logs,
        params={"directions": {"loss": "min", "val_accuracy": "max"}},
        samples=[[70, 70]] * len(hits),
        val_samples=[[70, 70]] * len(hits),
    )
    assert set(result.history.history["val_accuracy"]) == {float(np.float32(57 / 70))}
    assert len([d for d in result.decisions if isinstance(d, SaveModel)]) == 1
    assert result.stopped_epoch == 3  # patience 3 counted from epoch 0, the only best
