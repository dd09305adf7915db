"""One training loop and one evaluation for every method (SPEC section 4).

Rows stay on the training device for the whole run: each epoch draws one permutation there
and slices batches from it, losses are accumulated on the device and read once, and
evaluation runs under ``torch.inference_mode`` in large batches.
"""

import random
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from quantization import TemperatureSchedule

from .methods import METHODS, Method, QuantizerContext
from .mlp import MLP, SplitModel

BATCH_SIZE = 512
EVAL_BATCH_SIZE = 65536


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
        """Read the seven keys from a dict or CSV row, with their proper Python types."""
        return cls(**{f.name: f.type(values[f.name]) for f in fields(cls)})

    def __post_init__(self) -> None:
        if self.num_epochs < 1 or self.hidden_layers < 0 or self.hidden_neurons < 1:
            raise ValueError(f"num_epochs and hidden_neurons must be >= 1 and hidden_layers >= 0: {self}")
        if not 0.0 <= self.dropout_rate < 1.0 or self.learning_rate <= 0 or not 0 < self.decrease_factor <= 1:
            raise ValueError(f"need 0 <= dropout_rate < 1, learning_rate > 0, 0 < decrease_factor <= 1: {self}")


SETTING_KEYS: tuple[str, ...] = tuple(f.name for f in fields(Setting))


Split = tuple[torch.Tensor, torch.Tensor]  # (x [n, d], y [n]), standardized, on the device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(method: Method, setting: Setting, ctx: QuantizerContext) -> SplitModel:
    """A fresh network for ``method`` on the device of the training rows."""
    quantizer = None if method.quantizer is None else method.quantizer(ctx)
    in_features = ctx.n_features if quantizer is None else quantizer.out_features
    mlp = MLP(in_features, setting.hidden_neurons, setting.hidden_layers, setting.dropout_rate)
    return SplitModel(quantizer, mlp).to(ctx.train_x.device)


def train_model(model: SplitModel, x: torch.Tensor, y: torch.Tensor, setting: Setting) -> float:
    """Train with Adam on shuffled batches of 512; return the last epoch's mean training loss."""
    optimizer = torch.optim.Adam(model.parameters(), lr=setting.learning_rate, weight_decay=setting.weight_decay)
    schedule = TemperatureSchedule(setting.decrease_factor, setting.num_epochs)
    n = x.shape[0]
    model.train()
    model.set_hard(False)
    for epoch in range(setting.num_epochs):
        model.set_temperature(schedule.tau)
        last_epoch = epoch == setting.num_epochs - 1
        epoch_loss = torch.zeros((), device=x.device)
        for batch in torch.randperm(n, device=x.device).split(BATCH_SIZE):
            loss = nn.functional.mse_loss(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if last_epoch:
                epoch_loss += loss.detach() * batch.numel()
        schedule.step()
    model.set_temperature(schedule.tau)  # the soft-mode evaluations use the final temperature
    return epoch_loss.item() / n


@torch.inference_mode()
def evaluate(model: SplitModel, x: torch.Tensor, y: torch.Tensor, hard: bool = True) -> float:
    """Sample-weighted MSE over the whole split, in eval mode (dropout off)."""
    model.eval()
    model.set_hard(hard)
    squared_error = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], EVAL_BATCH_SIZE):
        error = model(x[start : start + EVAL_BATCH_SIZE]) - y[start : start + EVAL_BATCH_SIZE]
        squared_error += error.double().square().sum()
    return squared_error.item() / x.shape[0]


@dataclass
class MethodResult:
    """The losses of one method on one split of the data, as the result files report them."""

    losses: dict[str, float]  # split name -> hard-mode MSE
    train_loss: float
    seconds: float  # training time (of the FP network for post-training methods)
    soft_losses: dict[str, float] = field(default_factory=dict)  # soft_eval methods only
    model: SplitModel | None = None


def run_methods(
    names: Iterable[str],
    settings: Mapping[str, Setting],
    train: Split,
    evaluations: Mapping[str, Split],
    bits: int,
    seed: int,
    on_method: Callable[[str], None] | None = None,
) -> dict[str, MethodResult]:
    """Train and evaluate each named method with its setting on one split of the data.

    Every trained network is built right after seeding with ``seed``, so a method's result
    does not depend on which others run beside it. A post-training method quantizes the
    inputs of the FP network of its setting, trained once and shared (with FP itself too).
    ``on_method(name)`` is called before each method starts (for progress bars).
    """
    ctx = QuantizerContext.from_training_rows(train[0], bits)
    fp_networks: dict[Setting, MethodResult] = {}

    def fit(method: Method, setting: Setting) -> MethodResult:
        seed_everything(seed)
        model = build_model(method, setting, ctx)
        start = time.perf_counter()
        train_loss = train_model(model, *train, setting)
        seconds = time.perf_counter() - start
        return _evaluated(method, model, evaluations, train_loss, seconds)

    results = {}
    for name in names:
        if on_method is not None:
            on_method(name)
        method, setting = METHODS[name], settings[name]
        if method.post_training or method.quantizer is None:
            if setting not in fp_networks:
                fp_networks[setting] = fit(METHODS["FP"], setting)
            fp = fp_networks[setting]
            if method.quantizer is None:
                results[name] = fp
                continue
            assert fp.model is not None
            model = SplitModel(method.quantizer(ctx).to(train[0].device), fp.model.mlp)
            results[name] = _evaluated(method, model, evaluations, fp.train_loss, fp.seconds)
        else:
            results[name] = fit(method, setting)
    return results


def _evaluated(
    method: Method, model: SplitModel, evaluations: Mapping[str, Split], train_loss: float, seconds: float
) -> MethodResult:
    losses = {split: evaluate(model, x, y, hard=True) for split, (x, y) in evaluations.items()}
    soft = {split: evaluate(model, x, y, hard=False) for split, (x, y) in evaluations.items()} if method.soft_eval else {}
    return MethodResult(losses, train_loss, seconds, soft, model)
