"""Bytes per sample on the wire, per dataset: what a deployment sends instead of float32 features."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from core.checks import MAX_BITS, MIN_BITS
from data import DATASETS, PAPER_DATASETS
from quantization.wire import payload_bytes


def payload_table(n_features: Mapping[str, int] | None = None) -> pd.DataFrame:
    """Bytes per sample at every bit width, and as float32, per dataset (default: the paper's six)."""
    if n_features is None:
        n_features = {name: DATASETS[name].n_features for name in PAPER_DATASETS}
    widths = range(MIN_BITS, MAX_BITS + 1)
    rows = {
        name: {"features": d, **{f"{b} bits": payload_bytes(1, d, b) for b in widths}, "float32": 4 * d}
        for name, d in n_features.items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dataset")
