"""The MLP, the edge/cloud split model, the method registry, the training loops and persistence."""

from .engine import StackedMLP, train_models
from .methods import METHOD_NAMES, METHODS, PAPER_METHODS, Method, QuantizerContext, build_model, get_method
from .mlp import MLP, SplitModel
from .persistence import SavedModel, load_model, save_model
from .runner import MethodResult, run_methods, seed_everything
from .setting import SETTING_KEYS, Setting
from .training import LabeledRows, evaluate, evaluate_splits, train_model

__all__ = [
    "LabeledRows",
    "METHODS",
    "METHOD_NAMES",
    "MLP",
    "PAPER_METHODS",
    "Method",
    "MethodResult",
    "QuantizerContext",
    "SETTING_KEYS",
    "SavedModel",
    "Setting",
    "StackedMLP",
    "SplitModel",
    "build_model",
    "evaluate",
    "evaluate_splits",
    "get_method",
    "load_model",
    "run_methods",
    "save_model",
    "seed_everything",
    "train_model",
    "train_models",
]
