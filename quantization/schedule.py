"""The sigmoid temperature schedule of the paper's training."""

from __future__ import annotations

from dataclasses import dataclass

from core.checks import finite_number, value_text, whole_number

MIN_TEMPERATURE = 1e-4


def check_temperature(tau: object) -> float:
    """Return ``tau`` as a float if it is a finite temperature > 0, else raise a ValueError that says what to do."""
    try:
        return finite_number("tau", tau, above=0)
    except ValueError:
        raise ValueError(f"tau must be a finite temperature > 0, got {value_text(tau)}; "
                         "for exact steps use hard mode (quantizer.hard = True)") from None


@dataclass
class TemperatureSchedule:
    """tau starts at 1; after every epoch ``tau = max(tau * decrease_factor**(1/num_epochs), 1e-4)``."""

    decrease_factor: float
    num_epochs: int
    tau: float = 1.0

    def __post_init__(self) -> None:
        self.num_epochs = whole_number("num_epochs", self.num_epochs, minimum=1)
        self.decrease_factor = finite_number("decrease_factor", self.decrease_factor, above=0, maximum=1)
        self.tau = check_temperature(self.tau)

    def step(self) -> float:
        """Advance by one epoch and return the new temperature."""
        factor = self.decrease_factor ** (1.0 / self.num_epochs)
        self.tau = max(self.tau * factor, MIN_TEMPERATURE)
        return self.tau
