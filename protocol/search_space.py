"""The paper's random search (its Table 3): the space and the reproducible draw of settings."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np
import pandas as pd

from models import SETTING_KEYS, Setting
from models.setting import INTEGER_SETTING_KEYS

from .common import MAX_STEPS, ProtocolError

PAPER_SEARCH_SPACE: dict[str, list] = {
    "weight_decay": [0],
    "learning_rate": [0.001, 0.0001],
    "hidden_layers": [5, 6, 8, 10],
    "hidden_neurons": [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
    "num_epochs": [30, 50, 70],
    "decrease_factor": [0.001, 0.0001],
    "dropout_rate": [0.0, 0.2, 0.4, 0.5],
}
DEBUG_OVERRIDES: dict[str, list] = {"hidden_neurons": [5], "num_epochs": [10], "hidden_layers": [1, 2]}
SEARCH_SEED = 42
assert tuple(PAPER_SEARCH_SPACE) == SETTING_KEYS


def paper_search_space(debug: bool = False) -> dict[str, list]:
    """The paper's Table 3, or with ``debug`` its small variant."""
    return {**PAPER_SEARCH_SPACE, **(DEBUG_OVERRIDES if debug else {})}


# NOTE[DIFF]: a search-space file may list a subset of the paper's Table 3; the rest keep its lists
def load_search_space(path: str | os.PathLike) -> dict[str, list]:
    """Read a JSON object of lists; keys it leaves out keep the paper's values."""
    try:
        user = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ProtocolError(f"cannot read the search space {path}: {error}") from None
    except UnicodeDecodeError as error:
        raise ProtocolError(f"the search space {path} is not UTF-8 text (byte {error.object[error.start]:#x} at "
                            f"position {error.start}); save it as UTF-8 JSON") from None
    if not isinstance(user, dict):
        raise ProtocolError(f"{path} must hold a JSON object mapping hyperparameter names to lists")
    unknown = sorted(set(user) - set(PAPER_SEARCH_SPACE))
    if unknown:
        raise ProtocolError(f"{path} has unknown keys {unknown}; allowed are {list(PAPER_SEARCH_SPACE)}")
    for key, values in user.items():
        _check_values(path, key, values)
    return {key: user.get(key, default) for key, default in PAPER_SEARCH_SPACE.items()}


def _check_values(path: str | os.PathLike, key: str, values: object) -> None:
    if not isinstance(values, list) or not values:
        raise ProtocolError(f"{path}: {key} must be a non-empty list")
    integer = key in INTEGER_SETTING_KEYS
    for value in values:
        kind = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ProtocolError(f"{path}: {key} must list {'integers' if integer else 'numbers'}, got {value!r}")
        try:
            Setting.check_value(key, value)
        except ValueError as error:
            raise ProtocolError(f"{path}: {error}") from None


def draw_settings(space: dict[str, list], n_settings: int) -> pd.DataFrame:
    """``n_settings`` settings (``--n_steps``): ``numpy.random.seed(42)``, then one ``choice`` per key in order.

    Returns a frame indexed by ``hyperparameter_setting_id`` with the seven keys as columns.
    """
    if not 1 <= n_settings <= MAX_STEPS:
        raise ProtocolError(f"--n_steps (the number of settings) must be from 1 to {MAX_STEPS}, got {n_settings}")
    np.random.seed(SEARCH_SEED)
    draws = {key: np.random.choice(space[key], size=n_settings, replace=True) for key in SETTING_KEYS}
    return pd.DataFrame(draws, index=pd.RangeIndex(n_settings, name="hyperparameter_setting_id"))
