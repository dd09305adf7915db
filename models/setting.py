"""One hyperparameter setting of the search space (the paper's Table 3), checked where it is made."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Callable, Mapping

from quantization.thresholds import is_finite_number, is_whole_number, value_text

INTEGER_SETTING_KEYS = ("hidden_layers", "hidden_neurons", "num_epochs")
SETTING_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {  # key -> (the range in words, its test)
    "weight_decay": (">= 0", lambda v: v >= 0),
    "learning_rate": ("> 0", lambda v: v > 0),
    "hidden_layers": (">= 0", lambda v: v >= 0),
    "hidden_neurons": (">= 1", lambda v: v >= 1),
    "num_epochs": (">= 1", lambda v: v >= 1),
    "decrease_factor": ("in (0, 1]", lambda v: 0 < v <= 1),
    "dropout_rate": ("in [0, 1)", lambda v: 0 <= v < 1),
}


@dataclass(frozen=True)
class Setting:
    """One hyperparameter setting of the search space (the paper's Table 3)."""

    weight_decay: float
    learning_rate: float
    hidden_layers: int
    hidden_neurons: int
    num_epochs: int
    decrease_factor: float
    dropout_rate: float

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> "Setting":
        """Read the seven keys from a dict or CSV row, numbers or their text (other keys are ignored)."""
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ValueError(f"a setting needs the keys {', '.join(SETTING_KEYS)}; missing {', '.join(missing)}")
        return cls(**{f.name: _parsed(values[f.name]) for f in fields(cls)})

    @staticmethod
    def check_value(key: str, value: object) -> None:
        """Raise a ValueError naming ``key`` unless ``value`` is a finite number (a whole one for
        the integer keys) in its range (``SETTING_RANGES``)."""
        words, in_range = SETTING_RANGES[key]
        if not is_finite_number(value):
            raise ValueError(f"{key} must be a finite number, got {value_text(value)}")
        if key in INTEGER_SETTING_KEYS and not is_whole_number(value):
            raise ValueError(f"{key} must be a whole number, got {value_text(value)}")
        if not in_range(value):
            raise ValueError(f"{key} must be {words}, got {value_text(value)}")

    def __post_init__(self) -> None:
        for key in SETTING_RANGES:  # checked, then stored as plain int or float (from NumPy or a CSV's 3.0, say)
            value = getattr(self, key)
            self.check_value(key, value)
            object.__setattr__(self, key, int(value) if key in INTEGER_SETTING_KEYS else float(value))


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Setting))


def _parsed(value: object) -> object:
    """A number written as text ("2", "1e-3") as a float; anything else as it is (for the checks to name)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value
