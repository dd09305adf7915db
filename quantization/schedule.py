"""The sigmoid temperature schedule of SPEC section 4."""

from __future__ import annotations

from dataclasses import dataclass

from .thresholds import check_count, is_finite_number, value_text

MIN_TEMPERATURE = 1e-4


def check_temperature(tau: object) -> float:
    """Return ``tau`` as a float if it is a finite temperature > 0, else raise a ValueError that says what to do."""
    if not (is_finite_number(tau) and tau > 0):
        raise ValueError(f"tau must be a finite temperature > 0, got {value_text(tau)}; for exact steps use hard mode (quantizer.hard = True)")
    return float(tau)


@dataclass
class TemperatureSchedule:
    """tau starts at 1; after every epoch ``tau = max(tau * decrease_factor**(1/num_epochs), 1e-4)``."""

    decrease_factor: float
    num_epochs: int
    tau: float = 1.0

    def __post_init__(self) -> None:
        self.num_epochs = check_count("num_epochs", self.num_epochs)
        if not (is_finite_number(self.decrease_factor) and 0 < self.decrease_factor <= 1):
            raise ValueError(f"decrease_factor must be in (0, 1] (the temperature falls or stays), got {value_text(self.decrease_factor)}")
        self.tau = check_temperature(self.tau)

    def step(self) -> float:
        """Advance by one epoch and return the new temperature."""
        factor = self.decrease_factor ** (1.0 / self.num_epochs)
        self.tau = max(self.tau * factor, MIN_TEMPERATURE)
        return self.tau
