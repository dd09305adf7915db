"""Splits and standardization of tuning and best-setting runs (scikit-learn does the work).

For classification (``stratify=True``) the splits keep the class proportions
(``train_test_split(stratify=y)``, ``StratifiedKFold`` with the same shuffle and seed) and the
target, class indices, is not standardized.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler

TEST_SIZE = 0.1
SPLIT_SEED = 42


@dataclass
class ScaledSplits:
    """Training rows and other parts, standardized with the training rows' mean and scale."""

    parts: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (x [n, d], y [n]); "train" first
    x_scaler: StandardScaler
    y_scaler: StandardScaler | None  # None: class indices, not standardized

    def tensors(self, device: torch.device | str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Every part as float32 tensors on ``device``."""
        return {
            name: (torch.as_tensor(x, dtype=torch.float32, device=device),
                   torch.as_tensor(y, dtype=torch.float32, device=device))
            for name, (x, y) in self.parts.items()
        }


def device_precision(raw_x: np.ndarray) -> np.ndarray:
    """Raw features rounded to float32, the numbers a device measures (as float64 for the arithmetic).

    The exported encoder reads float32 raw values; standardizing these same values for training
    and evaluation makes every index the model sees the index a device sends for that row.
    """
    # NOTE[DIFF]: raw values rounded to float32 (what a device reads); the paper's code keeps float64
    return np.asarray(raw_x, dtype=np.float32).astype(np.float64)


def standardize(train: tuple[np.ndarray, np.ndarray], scale_y: bool = True,
                **others: tuple[np.ndarray, np.ndarray]) -> ScaledSplits:
    """Fit StandardScalers on the training X (at device precision) and, with ``scale_y``, y; apply them to
    every part."""
    x_scaler = StandardScaler().fit(device_precision(train[0]))
    y_scaler = StandardScaler().fit(train[1].reshape(-1, 1)) if scale_y else None  # None: class indices
    parts = {
        name: (x_scaler.transform(device_precision(x)),
               y if y_scaler is None else y_scaler.transform(y.reshape(-1, 1)).ravel())
        for name, (x, y) in {"train": train, **others}.items()
    }
    return ScaledSplits(parts, x_scaler, y_scaler)


def holdout_split(x: np.ndarray, y: np.ndarray, seed: int = SPLIT_SEED, stratify: bool = False) -> ScaledSplits:
    """``train_test_split(test_size=0.1, random_state=seed)``, standardized on the 90 % part
    (``stratify``: by the classes y, which stay unscaled)."""
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=seed,
                                                        stratify=y if stratify else None)
    return standardize((x_train, y_train), scale_y=not stratify, test=(x_test, y_test))


def tuning_folds(x: np.ndarray, y: np.ndarray, k_folds: int, stratify: bool = False) -> Iterator[ScaledSplits]:
    """Per fold of the 90 % part (``KFold(k, shuffle=True, random_state=42)``): train, val and test.

    ``stratify``: the test part by the classes y, and ``StratifiedKFold`` with the same shuffle and seed.
    """
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED,
                                                      stratify=y if stratify else None)
    folds = (StratifiedKFold if stratify else KFold)(n_splits=k_folds, shuffle=True, random_state=SPLIT_SEED)
    for train_rows, val_rows in folds.split(x_rest, y_rest):
        yield standardize(
            (x_rest[train_rows], y_rest[train_rows]),
            scale_y=not stratify,
            val=(x_rest[val_rows], y_rest[val_rows]),
            test=(x_test, y_test),
        )
