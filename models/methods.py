"""The methods as a registry of small definitions: the paper's thirteen and yours.

A method is what the network sees (its quantizer, or none), whether it is trained at all
(``post_training`` methods evaluate the full-precision network of the same setting), and
whether the paper also reports it evaluated without rounding (``soft_eval``). Whether
thresholds train is a property of the quantizer the method builds. Adding a method is one
entry in ``METHODS``: the protocol scripts then train it beside the paper's, write its columns
after the paper's (``protocol.schema``), and still read files written without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.schema import PAPER_METHODS, PAPER_POST_TRAINING, PAPER_SOFT_EVALUATED
from quantization import (
    BwSQQuantizer,
    LLTQuantizer,
    LSQQuantizer,
    MidpointQuantizer,
    Quantizer,
    SQplusQuantizer,
    SQQuantizer,
    minmax_thresholds,
    n_thresholds,
    quantile_thresholds,
)

from .mlp import MLP, SplitModel
from .setting import Setting


@dataclass(frozen=True)
class QuantizerContext:
    """What a quantizer is built from: bits and the standardized training rows' thresholds."""

    bits: int
    train_x: torch.Tensor  # [n, d]
    quantile: torch.Tensor  # [d, M]
    minmax: torch.Tensor  # [d, M]

    @property
    def n_features(self) -> int:
        """The number of features d of the training rows."""
        return self.train_x.shape[1]

    @classmethod
    def from_training_rows(cls, train_x: torch.Tensor, bits: int) -> QuantizerContext:
        """Thresholds computed once, so every method of a row starts from the same ones."""
        return cls(bits, train_x, quantile_thresholds(train_x, bits), minmax_thresholds(train_x, bits))

    @classmethod
    def placeholder(cls, bits: int, n_features: int) -> QuantizerContext:
        """Shapes only, for rebuilding a saved model before loading its state."""
        thresholds = torch.zeros(n_features, n_thresholds(bits))
        return cls(bits, torch.zeros(1, n_features), thresholds, thresholds)


@dataclass(frozen=True)
class Method:
    """One column family of the result files."""

    name: str
    quantizer: Callable[[QuantizerContext], Quantizer] | None  # None: float features (FP)
    post_training: bool = False  # quantize the inputs of the trained FP network, train nothing
    soft_eval: bool = False  # also evaluate without rounding (``*_train`` columns)

    @property
    def network(self) -> str:
        """The method whose trained network this one evaluates: its own, or FP's after training."""
        return "FP" if self.post_training else self.name


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("FP", None),
        Method("Po-MQ", lambda rows_info: MidpointQuantizer(rows_info.minmax), post_training=True),
        Method("Po-QQ", lambda rows_info: MidpointQuantizer(rows_info.quantile), post_training=True),
        Method("Pr-MQ", lambda rows_info: MidpointQuantizer(rows_info.minmax)),
        Method("Pr-QQ", lambda rows_info: MidpointQuantizer(rows_info.quantile)),
        Method("SQ", lambda rows_info: SQQuantizer(rows_info.quantile), soft_eval=True),
        Method("SQplus", lambda rows_info: SQplusQuantizer(rows_info.quantile), soft_eval=True),
        Method("Bw-MQ", lambda rows_info: BwSQQuantizer(rows_info.minmax, trainable=False)),
        Method("Bw-QQ", lambda rows_info: BwSQQuantizer(rows_info.quantile, trainable=False)),
        Method("Bw-SQ", lambda rows_info: BwSQQuantizer(rows_info.quantile), soft_eval=True),
        Method("LLT9", lambda rows_info: LLTQuantizer(rows_info.bits, rows_info.n_features, granularity=9),
               soft_eval=True),
        Method("LLT4", lambda rows_info: LLTQuantizer(rows_info.bits, rows_info.n_features, granularity=4),
               soft_eval=True),
        Method("LSQ", lambda rows_info: LSQQuantizer(rows_info.bits, rows_info.n_features).init_step_size(
            rows_info.train_x)),
        # beyond the paper: Bw-SQ trained straight through, hard steps forward, the sigmoids' gradient backward
        Method("Bw-SQ-ST", lambda rows_info: BwSQQuantizer(rows_info.quantile, straight_through=True)),
    ]
}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)
assert all(
    m in METHODS and METHODS[m].post_training == (m in PAPER_POST_TRAINING)
    and METHODS[m].soft_eval == (m in PAPER_SOFT_EVALUATED)
    for m in PAPER_METHODS
), "the paper's methods stay registered as core.schema describes them: its result files need them"


def get_method(name: str) -> Method:
    """The registered method called ``name``, or a ValueError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None


def build_model(method: Method, setting: Setting, rows_info: QuantizerContext, outputs: int = 1) -> SplitModel:
    """A fresh network for ``method``: its quantizer and the setting's MLP, on the device of the training rows
    (``outputs``: 1 for regression, the number of classes for classification)."""
    quantizer = None if method.quantizer is None else method.quantizer(rows_info)
    in_features = rows_info.n_features if quantizer is None else quantizer.out_features
    mlp = MLP(in_features, setting.hidden_neurons, setting.hidden_layers, setting.dropout_rate, outputs)
    return SplitModel(quantizer, mlp).to(rows_info.train_x.device)
