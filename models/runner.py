"""Running the methods of one split of the data: build every network, train them in stacks, evaluate."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .engine import train_models
from .methods import METHODS, PAPER_METHODS, Method, QuantizerContext, build_model, get_method
from .mlp import SplitModel
from .setting import Setting
from .training import LabeledRows, evaluate_splits, split_metrics

# NOTE[DIFF]: the networks of one setting train as one stack; each is charged an equal time share
STACK_PARAMETERS = 2**24  # MLP weights trained as one stack at most: with gradients and Adam's state about 270 MB


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class MethodResult:
    """The losses of one method on one split of the data, as the result files report them."""

    losses: dict[str, float]  # split name -> hard-mode MSE (classification: mean cross-entropy)
    train_loss: float
    seconds: float  # training time (of the FP network for post-training methods)
    soft_losses: dict[str, float] = field(default_factory=dict)  # soft_eval methods only
    model: SplitModel | None = None
    accuracies: dict[str, float] = field(default_factory=dict)  # classification: split name -> hard-mode accuracy


def run_methods(
    names: Iterable[str],
    settings: Mapping[str, Setting],
    train: LabeledRows,
    evaluations: Mapping[str, LabeledRows],
    bits: int,
    seed: int,
    on_stack: Callable[[str], None] | None = None,
    n_classes: int | None = None,
) -> dict[str, MethodResult]:
    """Train and evaluate each named method with its setting on one split of the data.

    Every network is built right after seeding with ``seed``, so its initial weights do not
    depend on which other methods run. A post-training method quantizes the inputs of the FP
    network of its setting, trained once and shared (with FP itself too). Networks of one
    setting train together (:func:`train_models`), the paper's methods apart from further ones,
    in stacks of at most ``STACK_PARAMETERS`` weights so that the paper's widest settings fit in
    memory; each network is charged an equal
    share of its stack's training time. ``on_stack(names)`` is called with the space-separated
    methods of each stack before it trains. With ``n_classes`` (C >= 2) the networks are classifiers
    with C outputs, trained on the cross-entropy of the class indices in the targets, and the results
    hold their accuracies too.
    """
    if isinstance(names, str):
        raise TypeError(f"names must be a list of method names, e.g. [{names!r}], not a string")
    names = list(names)
    for name in names:
        get_method(name)
    unset = [name for name in names if name not in settings]
    if unset:
        raise ValueError(f"settings has no setting for {', '.join(unset)}; give every method of names one")
    rows_info = QuantizerContext.from_training_rows(train[0], bits)
    networks: dict[tuple[str, Setting], SplitModel] = {}  # (trained method, setting) -> network
    for name in names:
        key = _network_key(name, settings[name])
        if key not in networks:
            seed_everything(seed)
            networks[key] = build_model(METHODS[key[0]], key[1], rows_info, n_classes or 1)
    trained: dict[tuple[str, Setting], tuple[float, float]] = {}  # key -> (train loss, seconds)
    for keys in _stacks(networks):
        if on_stack is not None:
            on_stack(" ".join(key[0] for key in keys))
        start = time.perf_counter()
        losses = train_models([networks[key] for key in keys], *train, keys[0][1], seed)
        seconds = (time.perf_counter() - start) / len(keys)
        trained.update({key: (loss, seconds) for key, loss in zip(keys, losses)})
    results = {}
    for name in names:
        method, key = METHODS[name], _network_key(name, settings[name])
        model = networks[key]
        # NOTE[DIFF]: Po-* evaluate the FP network trained with their own selected setting, shared
        if method.post_training:
            model = SplitModel(method.quantizer(rows_info).to(train[0].device), model.mlp)
        results[name] = _evaluated(method, model, evaluations, *trained[key])
    return results


def _stacks(networks: Mapping[tuple[str, Setting], SplitModel]) -> list[list[tuple[str, Setting]]]:
    """The networks of each setting, in runs of at most ``STACK_PARAMETERS`` MLP weights (at least one network);
    the paper's methods and those registered beyond them in stacks of their own.

    A stack's composition can change its networks' last bits (its one flat weight tensor, its
    batched matmuls), so a method added to the registry changes none of the paper's numbers.
    """
    stacks: list[list[tuple[str, Setting]]] = []
    sizes: list[int] = []  # weights per stack
    open_stack: dict[tuple[Setting, bool], int] = {}  # (setting, paper's?) -> index of the stack it is filling
    for key, model in networks.items():
        weights = sum(p.numel() for p in model.mlp.parameters())
        group = (key[1], key[0] in PAPER_METHODS)
        index = open_stack.get(group)
        if index is None or sizes[index] + weights > STACK_PARAMETERS:
            index = open_stack[group] = len(stacks)
            stacks.append([])
            sizes.append(0)
        stacks[index].append(key)
        sizes[index] += weights
    return stacks


def _network_key(name: str, setting: Setting) -> tuple[str, Setting]:
    """The network a method needs: its own, or for post-training methods FP's of that setting."""
    return (METHODS[name].network, setting)


def _evaluated(
    method: Method, model: SplitModel, evaluations: Mapping[str, LabeledRows], train_loss: float, seconds: float
) -> MethodResult:
    losses, accuracies = split_metrics(model, evaluations, hard=True)
    soft = evaluate_splits(model, evaluations, hard=False) if method.soft_eval else {}
    return MethodResult(losses, train_loss, seconds, soft, model, accuracies)
