"""One training loop and one evaluation for every method (SPEC section 4).

Rows stay on the training device for the whole run: each epoch draws one permutation there
and slices batches from it, losses are accumulated on the device and read once, and
evaluation runs under ``torch.inference_mode`` in large batches.
"""

import random
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Mapping, Sequence

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


class StackedMLP(nn.Module):
    """``G`` MLPs of one shape as one module: batched matmuls over their stacked weights."""

    def __init__(self, mlps: Sequence[MLP]) -> None:
        super().__init__()
        columns = list(zip(*([m for m in mlp if isinstance(m, nn.Linear)] for mlp in mlps)))
        self.weights = nn.ParameterList(torch.stack([lin.weight.detach().T for lin in c]) for c in columns)  # [G, in, out]
        self.biases = nn.ParameterList(torch.stack([lin.bias.detach() for lin in c])[:, None] for c in columns)  # [G, 1, out]
        self.dropout = next((m.p for m in mlps[0] if isinstance(m, nn.Dropout)), 0.0)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:  # [G, B, in] -> [G, B]
        """In training, one dropout mask per layer is drawn from ``generator`` and shared by the G networks."""
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if layer < len(self.weights) - 1:
                x = torch.relu_(x)
                if self.training and self.dropout > 0:
                    keep = torch.empty(x.shape[1:], device=x.device).bernoulli_(1 - self.dropout, generator=generator)
                    x = x * (keep / (1 - self.dropout))
        return x.squeeze(-1)

    @torch.no_grad()
    def unstack_into(self, mlps: Sequence[MLP]) -> None:
        """Copy the trained weights back into the separate MLPs."""
        for g, mlp in enumerate(mlps):
            for linear, weight, bias in zip((m for m in mlp if isinstance(m, nn.Linear)), self.weights, self.biases):
                linear.weight.copy_(weight[g].T)
                linear.bias.copy_(bias[g, 0])


def train_models(models: Sequence[SplitModel], x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int) -> list[float]:
    """Train networks of one input width together; return each one's last-epoch mean training loss.

    Adam on shuffled batches of 512, the temperature lowered after every epoch. The networks
    see the same batches and dropout masks (drawn from one generator seeded with ``seed``, so a
    network's training does not depend on the others in its group) and run as one
    :class:`StackedMLP`: each network's gradients, Adam updates and results are its own, but
    the per-operation overhead is paid once for the group.
    """
    stacked = StackedMLP([m.mlp for m in models]).to(x.device)
    quantizers = [m.quantizer for m in models]
    parameters = [*stacked.parameters(), *(p for q in quantizers if q is not None for p in q.parameters())]
    optimizer = torch.optim.Adam(parameters, lr=setting.learning_rate, weight_decay=setting.weight_decay, fused=True)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    schedule = TemperatureSchedule(setting.decrease_factor, setting.num_epochs)
    n = x.shape[0]
    stacked.train()
    for model in models:
        model.train()
        model.set_hard(False)
    for epoch in range(setting.num_epochs):
        for model in models:
            model.set_temperature(schedule.tau)
        last_epoch = epoch == setting.num_epochs - 1
        epoch_loss = torch.zeros(len(models), device=x.device)
        for batch in torch.randperm(n, device=x.device, generator=generator).split(BATCH_SIZE):
            rows = x[batch]
            inputs = torch.stack([rows if q is None else q(rows) for q in quantizers])  # [G, B, in]
            losses = (stacked(inputs, generator) - y[batch]).square().mean(dim=1)  # [G]
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if last_epoch:
                epoch_loss += losses.detach() * batch.numel()
        schedule.step()
    stacked.unstack_into([m.mlp for m in models])
    for model in models:
        model.set_temperature(schedule.tau)  # the soft-mode evaluations use the final temperature
    return (epoch_loss / n).tolist()


def train_model(model: SplitModel, x: torch.Tensor, y: torch.Tensor, setting: Setting, seed: int | None = None) -> float:
    """Train one network (see :func:`train_models`); without ``seed`` the batches follow torch's global seed."""
    if seed is None:
        seed = int(torch.randint(2**62, ()))
    return train_models([model], x, y, setting, seed)[0]


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

    Every network is built right after seeding with ``seed``, so its initial weights do not
    depend on which other methods run. A post-training method quantizes the inputs of the FP
    network of its setting, trained once and shared (with FP itself too). Networks of one
    setting and input width train together (:func:`train_models`); each is charged an equal
    share of the group's training time. ``on_method(label)`` reports progress.
    """
    names = list(names)
    ctx = QuantizerContext.from_training_rows(train[0], bits)
    networks: dict[tuple[str, Setting], SplitModel] = {}  # (trained method, setting) -> network
    for name in names:
        key = _network_key(name, settings[name])
        if key not in networks:
            seed_everything(seed)
            networks[key] = build_model(METHODS[key[0]], key[1], ctx)
    groups: dict[tuple[Setting, int], list[tuple[str, Setting]]] = {}
    for key, model in networks.items():
        groups.setdefault((key[1], model.mlp[0].in_features), []).append(key)
    trained: dict[tuple[str, Setting], tuple[float, float]] = {}  # key -> (train loss, seconds)
    for (setting, _), keys in groups.items():
        if on_method is not None:
            on_method(" ".join(key[0] for key in keys))
        start = time.perf_counter()
        losses = train_models([networks[key] for key in keys], *train, setting, seed)
        seconds = (time.perf_counter() - start) / len(keys)
        trained.update({key: (loss, seconds) for key, loss in zip(keys, losses)})
    results = {}
    for name in names:
        method, key = METHODS[name], _network_key(name, settings[name])
        model = networks[key]
        if method.post_training:
            model = SplitModel(method.quantizer(ctx).to(train[0].device), model.mlp)
        results[name] = _evaluated(method, model, evaluations, *trained[key])
    return results


def _network_key(name: str, setting: Setting) -> tuple[str, Setting]:
    """The network a method needs: its own, or for post-training methods FP's of that setting."""
    return ("FP" if METHODS[name].post_training else name, setting)


def _evaluated(
    method: Method, model: SplitModel, evaluations: Mapping[str, Split], train_loss: float, seconds: float
) -> MethodResult:
    losses = {split: evaluate(model, x, y, hard=True) for split, (x, y) in evaluations.items()}
    soft = {split: evaluate(model, x, y, hard=False) for split, (x, y) in evaluations.items()} if method.soft_eval else {}
    return MethodResult(losses, train_loss, seconds, soft, model)
