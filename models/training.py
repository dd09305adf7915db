"""The paper's training loop, written plainly for any network, and its evaluation.

:func:`train_model` trains any :class:`SplitModel` (a quantizer in front of this project's MLP or
of a network of your own) with autograd and ``torch.optim.Adam``. The protocol trains its
networks with the stacked engine instead (models/engine.py, ``train_models``), which computes the
same training, to rounding, several networks at once and many times faster.
:func:`evaluate` and :func:`evaluate_splits` report the paper's loss: the sample-weighted MSE
in eval mode with hard quantization. A network with C >= 2 outputs (class scores ``[n, C]``) is a
classifier: it trains on the cross-entropy of the class indices in y, its loss is the
sample-weighted mean cross-entropy, and :func:`split_metrics` also gives its accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from quantization import TemperatureSchedule

from .mlp import MLP, SplitModel
from .setting import Setting

BATCH_SIZE = 512
EVAL_BATCH_SIZE = 65536

LabeledRows = tuple[torch.Tensor, torch.Tensor]  # (x [n, d], y [n]), standardized, on the device


def train_model(model: SplitModel, x: torch.Tensor, y: torch.Tensor, setting: Setting,
                seed: int | None = None) -> float:
    """Train ``model`` on rows x [n, d] and targets y [n]; return the last epoch's mean training loss.

    Adam(learning_rate, weight_decay) on the mean squared error (for a network with C >= 2
    outputs: the mean cross-entropy of the class indices y) of shuffled batches of 512 for
    ``num_epochs`` epochs, the quantizer's temperature set by the paper's schedule before every
    epoch (its final value stays set). The batches follow a generator seeded with ``seed`` (drawn
    from torch's global seed without one); dropout draws from torch's global generator. A quantizer
    without trainable parameters runs in hard mode: the network trains on what it is evaluated on.
    Rows and targets are cast to the model's dtype.
    """
    x, y = training_rows(model, x, y)
    generator = torch.Generator(device=x.device).manual_seed(int(torch.randint(2**62, ())) if seed is None else seed)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=setting.learning_rate, weight_decay=setting.weight_decay)
    schedule = TemperatureSchedule(setting.decrease_factor, setting.num_epochs)
    model.train()
    model.set_hard(not needs_input_grad(model.quantizer))
    labels = y.long()  # class indices, used by a classifier only
    for _ in range(setting.num_epochs):
        model.set_temperature(schedule.tau)
        summed_loss = x.new_zeros(())  # summed over the epoch (a classifier's: its cross-entropy)
        for batch in torch.randperm(x.shape[0], device=x.device, generator=generator).split(BATCH_SIZE):
            out = predictions(model, x[batch])  # [B], or class scores [B, C]
            optimizer.zero_grad()
            if out.dim() == 1:
                error = out - y[batch]  # [B]
                error.square().mean().backward()
                optimizer.step()
                summed_loss += error.detach().square().sum()
            else:
                cross_entropy = F.cross_entropy(out, labels[batch], reduction="sum")
                (cross_entropy / batch.shape[0]).backward()
                optimizer.step()
                summed_loss += cross_entropy.detach()
        schedule.step()
    model.set_temperature(schedule.tau)  # the soft-mode evaluations use the final temperature
    return summed_loss.item() / x.shape[0]


def evaluate(model: SplitModel, x: torch.Tensor, y: torch.Tensor, hard: bool = True) -> float:
    """Sample-weighted MSE (a classifier's: mean cross-entropy) over the whole split, in eval mode (dropout off)."""
    return evaluate_splits(model, {"evaluation": (x, y)}, hard)["evaluation"]


def evaluate_splits(model: SplitModel, splits: Mapping[str, LabeledRows], hard: bool = True) -> dict[str, float]:
    """:func:`evaluate` on every split, with one forward pass over all their rows."""
    return split_metrics(model, splits, hard)[0]


@torch.inference_mode()
def split_metrics(model: SplitModel, splits: Mapping[str, LabeledRows],
                  hard: bool = True) -> tuple[dict[str, float], dict[str, float]]:
    """Per split the loss of :func:`evaluate` and, for a classifier, the accuracy (else no entries):
    the share of rows whose highest class score (the first, on ties) is their class."""
    check_split_models([model])
    if not splits:
        raise ValueError("no splits given; pass a mapping of names to (x, y)")
    splits = {name: rows_and_targets(model, x, y, name) for name, (x, y) in splits.items()}
    model.eval()
    model.set_hard(hard)
    x = torch.cat([x for x, _ in splits.values()])
    error = torch.cat([predictions(model, x[start : start + EVAL_BATCH_SIZE])
                       for start in range(0, x.shape[0], EVAL_BATCH_SIZE)])
    sizes = [y.shape[0] for _, y in splits.values()]
    if error.dim() == 2:  # class scores [n, C]
        labels = torch.cat([y for _, y in splits.values()]).long()
        losses = F.cross_entropy(error.double(), labels, reduction="none").split(sizes)
        hits = (error.argmax(dim=1) == labels).double().split(sizes)
        return ({name: part.sum().item() / part.shape[0] for name, part in zip(splits, losses)},
                {name: part.sum().item() / part.shape[0] for name, part in zip(splits, hits)})
    error -= torch.cat([y for _, y in splits.values()])
    parts = error.double().split(sizes)
    return {name: part.square().sum().item() / part.shape[0] for name, part in zip(splits, parts)}, {}


def predictions(model: SplitModel, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` for rows x [n, d], refused unless it is one prediction per row [n] or C >= 2 class scores [n, C]."""
    out = model(x)
    if out.shape != x.shape[:1] and not (out.dim() == 2 and out.shape[0] == x.shape[0] and out.shape[1] >= 2):
        raise ValueError(f"the network must return one prediction per row, [{x.shape[0]}], got {list(out.shape)}; "
                         f"end it in one output and squeeze it (a classifier: in class scores [{x.shape[0]}, C])")
    return out


def needs_input_grad(quantizer: nn.Module | None) -> bool:
    """Whether the network must hand an input gradient to this quantizer (it has parameters to train)."""
    return quantizer is not None and any(p.requires_grad for p in quantizer.parameters())


def check_split_models(models: Sequence[nn.Module]) -> None:
    """Refuse no networks, or networks other than :class:`SplitModel`."""
    if not models:
        raise ValueError("no networks given; pass a list of SplitModel networks built by models.build_model")
    for model in models:
        if not isinstance(model, SplitModel):
            raise TypeError(f"expected SplitModel(quantizer, MLP) networks, as models.build_model builds them, "
                            f"got {type(model).__name__}")


def input_width(model: SplitModel) -> int | None:
    """The number of features d of the rows [n, d] that ``model`` reads (None: a network of your own says)."""
    if model.quantizer is not None:
        return model.quantizer.n_features
    return model.mlp[0].in_features if isinstance(model.mlp, MLP) else None


def rows_and_targets(model: SplitModel, x: torch.Tensor, y: torch.Tensor, what: str) -> LabeledRows:
    """Check rows x [n, d] (n >= 1, d the network's input width) and targets y [n]; return both in the model's dtype."""
    width = input_width(model)
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
        raise TypeError(f"expected tensors of {what} rows and targets, got {type(x).__name__} and {type(y).__name__}; "
                        "convert numpy arrays with torch.as_tensor")
    if x.dim() != 2 or x.shape[0] == 0 or (width is not None and x.shape[1] != width) \
            or y.shape != x.shape[:1]:
        hint = "; flatten y with y.view(-1)" if y.dim() == 2 and y.shape[1] == 1 else ""
        raise ValueError(f"expected {what} rows x [n, {'d' if width is None else width}] with n >= 1 "
                         "and targets y [n], "
                         f"got {list(x.shape)} and {list(y.shape)}{hint}")
    return x.to(model.dtype), y.to(model.dtype)


def training_rows(model: SplitModel, x: torch.Tensor, y: torch.Tensor) -> LabeledRows:
    """:func:`rows_and_targets` of a :class:`SplitModel` for training, where every value must be finite."""
    check_split_models([model])
    x, y = rows_and_targets(model, x, y, "training")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):  # one check per run, not per batch
        raise ValueError("the training rows or targets hold NaN or infinite values; "
                         "drop or impute them before training")
    return x, y
