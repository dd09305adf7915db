"""Saving a trained model with everything needed to rebuild and evaluate it."""

from __future__ import annotations

import io
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from core.atomic import atomic_write_bytes
from data.splits import device_precision

from .methods import QuantizerContext, build_model, get_method
from .mlp import SplitModel
from .setting import Setting

FORMAT = "bsq-model/1"
PAYLOAD_KEYS = ("method", "bits", "setting", "n_features", "feature_names", "x_mean", "x_scale", "y_mean", "y_scale",
                "dataset", "state_dict")  # and "tau" and "classes", absent from files written before them


@dataclass
class SavedModel:
    """A trained network with its method, bits, setting and the standardization of its data."""

    model: SplitModel
    method: str
    bits: int
    setting: Setting
    feature_names: list[str]
    x_mean: np.ndarray  # [d], raw units
    x_scale: np.ndarray  # [d]
    y_mean: float
    y_scale: float
    dataset: str = ""
    classes: list | None = None  # a classifier's labels of the class indices 0..C-1 (y_mean 0, y_scale 1)

    def standardize(self, raw_x: np.ndarray) -> torch.Tensor:
        """Raw feature rows [n, d] -> the standardized float32 tensor the model expects (as in training)."""
        raw = device_precision(raw_x)
        if raw.ndim != 2 or raw.shape[1] != len(self.feature_names):
            raise ValueError(f"expected raw rows [n, {len(self.feature_names)}] "
                             f"(columns {', '.join(self.feature_names)}), "
                             f"got shape {raw.shape}; make one row 2-D with [row]")
        return torch.as_tensor((raw - self.x_mean) / self.x_scale, dtype=torch.float32)

    def predict(self, raw_x: np.ndarray) -> np.ndarray:
        """Hard-mode predictions in the target's raw units for raw feature rows [n, d]
        (a classifier's: the label of the highest class score)."""
        self.model.eval()
        self.model.set_hard(True)
        with torch.inference_mode():
            out = self.model(self.standardize(raw_x)).double().numpy()
        return self.labels(out) if self.classes is not None else out * self.y_scale + self.y_mean

    def labels(self, scores: np.ndarray) -> np.ndarray:
        """A classifier's class scores [n, C] -> the label of the highest score per row (the first, on ties)."""
        return np.asarray(self.classes)[np.asarray(scores).argmax(axis=1)]


def _untrained_model(method: str, bits: int, n_features: int, setting: Setting, outputs: int = 1) -> SplitModel:
    """The network that ``method`` builds for ``setting``: what a saved state dict is loaded into."""
    return build_model(get_method(method), setting, QuantizerContext.placeholder(bits, n_features), outputs)


def save_model(saved: SavedModel, path: str | os.PathLike) -> None:
    """Write ``saved`` to ``path`` atomically (a temporary file, then a rename).

    The model must be the network its method builds for its setting (so that :func:`load_model`
    can rebuild it); the quantizer's temperature is kept, so soft-mode outputs reload too.
    """
    with torch.device("meta"):  # shapes only: no second copy of a possibly wide network
        expected = _untrained_model(saved.method, saved.bits, len(saved.feature_names), saved.setting,
                                    len(saved.classes or [None])).state_dict()
    state = saved.model.state_dict()
    mismatch = sorted(set(expected) ^ set(state)) or [
        k for k in expected if torch.is_tensor(expected[k]) and expected[k].shape != state[k].shape]
    if mismatch:
        raise ValueError(f"the model is not the network {saved.method} builds at {saved.bits} bits for "
                         f"{len(saved.feature_names)} features and its setting (first difference: {mismatch[0]}); "
                         "save a model built by models.build_model")
    quantizer = saved.model.quantizer
    payload = {
        "format": FORMAT,
        "method": saved.method,
        "bits": saved.bits,
        "setting": asdict(saved.setting),
        "n_features": len(saved.feature_names),
        "feature_names": list(saved.feature_names),
        "x_mean": torch.as_tensor(saved.x_mean, dtype=torch.float64),
        "x_scale": torch.as_tensor(saved.x_scale, dtype=torch.float64),
        "y_mean": float(saved.y_mean),
        "y_scale": float(saved.y_scale),
        "dataset": saved.dataset,
        "state_dict": {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state.items()},
        "tau": None if quantizer is None else float(quantizer.tau),
    }
    if saved.classes is not None:  # a classifier (a regression's file stays as before)
        payload["classes"] = [_plain(label) for label in saved.classes]
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_model(path: str | os.PathLike) -> SavedModel:
    """Rebuild a model written by :func:`save_model` (on the CPU), ready for inference: in eval mode
    with hard quantization (``model.set_hard(False)`` gives the soft surrogate at its saved temperature)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; pass a .pt file written by --save_models") from None
    except Exception as error:  # torch's own message would suggest loading untrusted pickles
        raise ValueError(f"{path} is not a model file saved by this project ({type(error).__name__}); "
                         "pass a .pt file written by best_hyperparameter_testing_multiple.py --save_models") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a model saved by this project (expected format {FORMAT})")
    missing = [key for key in PAYLOAD_KEYS if key not in payload]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; it is damaged or was not written by save_model")
    setting = Setting.from_mapping(payload["setting"])
    classes = payload.get("classes")  # None: a regression (and every file written before classifiers)
    model = _untrained_model(payload["method"], payload["bits"], payload["n_features"], setting,
                             len(classes or [None]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError:
        raise ValueError(f"{path} holds weights that do not fit the network of its method and setting; "
                         "it is damaged or was not written by save_model") from None
    if payload.get("tau") is not None:  # files written before the temperature was saved have none
        model.set_temperature(payload["tau"])
    model.eval()
    model.set_hard(True)
    return SavedModel(
        model=model,
        method=payload["method"],
        bits=payload["bits"],
        setting=setting,
        feature_names=payload["feature_names"],
        x_mean=payload["x_mean"].numpy(),
        x_scale=payload["x_scale"].numpy(),
        y_mean=payload["y_mean"],
        y_scale=payload["y_scale"],
        dataset=payload["dataset"],
        classes=classes,
    )


def _plain(label: object) -> object:
    """A class label as a plain Python value (NumPy scalars are not loadable with weights_only)."""
    return label.item() if isinstance(label, np.generic) else label
