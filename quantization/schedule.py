"""The sigmoid temperature schedule of SPEC section 4."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from .thresholds import is_integral

MIN_TEMPERATURE = 1e-4


@dataclass
class TemperatureSchedule:
    """tau starts at 1; after every epoch ``tau = max(tau * decrease_factor**(1/num_epochs), 1e-4)``."""

    decrease_factor: float
    num_epochs: int
    tau: float = 1.0

    def __post_init__(self) -> None:
        if not (is_integral(self.num_epochs) and self.num_epochs >= 1):
            raise ValueError(f"num_epochs must be a whole number >= 1, got {self.num_epochs!r}")
        if not (isinstance(self.decrease_factor, numbers.Real) and 0 < self.decrease_factor <= 1):
            raise ValueError(f"decrease_factor must be in (0, 1] (the temperature falls or stays), got {self.decrease_factor!r}")

    def step(self) -> float:
        """Advance by one epoch and return the new temperature."""
        factor = self.decrease_factor ** (1.0 / self.num_epochs)
        self.tau = max(self.tau * factor, MIN_TEMPERATURE)
        return self.tau
