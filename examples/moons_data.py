"""The seed's two-moons data set, generated with numpy (no scikit-learn)."""

from __future__ import annotations

import numpy as np


def make_moons(
    n_samples: int = 100, noise: float = 0.2, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles with Gaussian noise: (X float32 [n, 2], y float32 [n])."""
    rng = np.random.default_rng(seed)
    n_outer = n_samples // 2
    n_inner = n_samples - n_outer
    outer = np.linspace(0.0, np.pi, n_outer)
    inner = np.linspace(0.0, np.pi, n_inner)
    points = np.vstack(
        [
            np.column_stack([np.cos(outer), np.sin(outer)]),
            np.column_stack([1.0 - np.cos(inner), 1.0 - np.sin(inner) - 0.5]),
        ]
    )
    labels = np.concatenate([np.zeros(n_outer), np.ones(n_inner)])
    points += rng.normal(scale=noise, size=points.shape)
    order = rng.permutation(n_samples)
    return points[order].astype("float32"), labels[order].astype("float32")


def split(n_train: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The seed's split: the first 30 samples train, the other 70 test."""
    X, y = make_moons(100, 0.2, 1)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]
