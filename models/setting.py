"""One hyperparameter setting of the search space (the paper's Table 3), checked where it is made."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, fields

from core.checks import finite_number, whole_number

INTEGER_SETTING_KEYS = ("hidden_layers", "hidden_neurons", "num_epochs")
SETTING_BOUNDS: dict[str, dict[str, float]] = {  # key -> its bounds, as core.checks.finite_number takes them
    "weight_decay": {"minimum": 0},
    "learning_rate": {"above": 0},
    "hidden_layers": {"minimum": 0},
    "hidden_neurons": {"minimum": 1},
    "num_epochs": {"minimum": 1},
    "decrease_factor": {"above": 0, "maximum": 1},
    "dropout_rate": {"minimum": 0, "below": 1},
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
    def from_mapping(cls, values: Mapping[str, object]) -> Setting:
        """Read the seven keys from a dict or CSV row, numbers or their text (other keys are ignored)."""
        missing = [f.name for f in fields(cls) if f.name not in values]
        if missing:
            raise ValueError(f"a setting needs the keys {', '.join(SETTING_KEYS)}; missing {', '.join(missing)}")
        return cls(**{f.name: _parsed(values[f.name]) for f in fields(cls)})

    @staticmethod
    def check_value(key: str, value: object) -> int | float:
        """``value`` as a plain int (integer keys) or float if it is a finite number (a whole one for the
        integer keys) within ``SETTING_BOUNDS[key]``, else a ValueError naming ``key``."""
        number = finite_number(key, value)
        if key in INTEGER_SETTING_KEYS:
            whole_number(key, value)
        finite_number(key, value, **SETTING_BOUNDS[key])
        return int(number) if key in INTEGER_SETTING_KEYS else number

    def __post_init__(self) -> None:
        for key in SETTING_BOUNDS:  # checked, then stored as plain int or float (from NumPy or a CSV's 3.0, say)
            object.__setattr__(self, key, self.check_value(key, getattr(self, key)))


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Setting))


def _parsed(value: object) -> object:
    """A number written as text ("2", "1e-3") as a float; anything else as it is (for the checks to name)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)
    return value
