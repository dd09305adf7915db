"""The sigmoid temperature schedule of SPEC section 4."""

from __future__ import annotations

from dataclasses import dataclass

MIN_TEMPERATURE = 1e-4


@dataclass
class TemperatureSchedule:
    """tau starts at 1; after every epoch ``tau = max(tau * decrease_factor**(1/num_epochs), 1e-4)``."""

    decrease_factor: float
    num_epochs: int
    tau: float = 1.0

    def step(self) -> float:
        """Advance by one epoch and return the new temperature."""
        factor = self.decrease_factor ** (1.0 / self.num_epochs)
        self.tau = max(self.tau * factor, MIN_TEMPERATURE)
        return self.tau
