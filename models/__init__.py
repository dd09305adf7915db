"""The MLP, the edge/cloud split model, the method registry and the training loop."""

from .methods import METHOD_NAMES, METHODS, PAPER_METHODS, Method, QuantizerContext, get_method
from .mlp import MLP, SplitModel
from .persistence import SavedModel, load_model, save_model
from .training import SETTING_KEYS, MethodResult, Setting, StackedMLP, build_model, evaluate, evaluate_splits, run_methods, seed_everything, train_model, train_models

__all__ = [
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
