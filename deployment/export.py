"""Export the edge half of a saved model as a device encoder, and the cloud half that reads it.

``python -m deployment.export MODEL --out DIR`` writes ``DIR/encoder.json`` and
``DIR/encoder.h`` (dependency-free C99) for a model written by ``models.save_model``.

The device rule, for every method: the index of feature ``f`` is the number of exported
thresholds ``r[f][k]`` that the raw value, as float32, strictly exceeds (``x > r``; NaN gives 0).
The thresholds are float32 numbers in raw sensor units, chosen so that this rule gives exactly
the indices of the Python model, ``model.edge(saved.standardize(x))``, for every float32 ``x``:

- In Python the index is a non-decreasing function of the raw float32 value: standardization
  (float64 ``(x - mean) / scale`` with ``scale > 0``, rounded to float32) is monotone, and so is
  every quantizer's encode (counting exceeded thresholds; LSQ's ``round(clamp(z / s))`` with
  ``s > 0``; LLT's clamped table position looked up in a non-decreasing hard table).
- A non-decreasing integer function ``i`` is a sum of steps, ``i(x) = #{k : i(x) >= k}``, and
  each step is ``[x > r_k]`` with ``r_k`` the largest float32 at which ``i < k`` (``+inf`` if no
  float32 reaches level ``k``). ``r_k`` is found by bisection over the ordered float32 bit
  patterns, evaluating the Python model itself, so rounding near a threshold is reproduced
  rather than approximated; ``r_k`` differs from ``t * scale + mean`` by about a float32 step
  of ``t`` times ``scale``.
- Comparing two float32 numbers involves no rounding, so a C compiler reproduces it exactly.

For threshold quantizers the thresholds are listed in the model's own (possibly unsorted)
order and ``ranks`` are the model's threshold ranks; for LSQ and LLT they are listed by level
(sorted, ranks ``0..M-1``). Before writing, the encoder is checked against the model on every
threshold, its float32 neighbours and random values; a model whose index is not monotone (a
negative LSQ step, say) is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.atomic import atomic_write_text
from models.persistence import SavedModel, load_model
from quantization.quantizers import ThresholdQuantizer
from quantization.thresholds import n_thresholds, threshold_ranks
from quantization.wire import payload_bytes, unpack, unpack_samples

FORMAT = "bsq-encoder/1"
ENCODING = (
    "index of feature f = number of k with x_f > thresholds[f][k], x_f the raw value as float32 "
    "(strict >, NaN gives 0); thresholds are exact float32 values, the string \"Infinity\" (JSON has no "
    "infinity) where no value reaches the level, \"-Infinity\" where every value above -infinity does"
)
BIT_ORDER = (
    "one sample = the indices of features 0..d-1 in order, each written with `bits` bits most significant "
    "bit first, concatenated and cut into bytes most significant bit first, the last byte zero-padded "
    "(np.packbits of the row-major bit matrix, quantization.wire.pack)"
)
NEG_INF_KEY = -0x7F800001  # ordered key of -inf (see _floats)
POS_INF_KEY = 0x7F800000  # ordered key of +inf
N_RANDOM_PROBES = 2048


@dataclass(frozen=True)
class Encoder:
    """The device rule of a saved model: raw float32 thresholds [d, M] and their ranks."""

    method: str
    bits: int
    dataset: str
    features: list[str]
    thresholds: np.ndarray  # [d, M] float32, raw units
    ranks: np.ndarray  # [d, M] int64
    x_mean: np.ndarray  # [d] float64, the model's standardization (for reference)
    x_scale: np.ndarray  # [d] float64

    @property
    def payload_bytes(self) -> int:
        """Bytes of one encoded sample."""
        return payload_bytes(1, len(self.features), self.bits)

    def indices(self, raw_x: np.ndarray) -> np.ndarray:
        """The device rule in numpy: raw float32 rows [n, d] -> int64 indices [n, d]."""
        raw = np.asarray(raw_x, dtype=np.float32)
        return (raw[..., None] > self.thresholds).sum(axis=-1, dtype=np.int64)


def edge_indices(saved: SavedModel, raw_x: np.ndarray) -> np.ndarray:
    """What the Python model sends for raw float32 rows [n, d]: ``model.edge(saved.standardize(x))``."""
    with torch.inference_mode():
        return saved.model.edge(saved.standardize(np.asarray(raw_x, dtype=np.float32))).numpy()


def _floats(keys: np.ndarray) -> np.ndarray:
    """int64 keys -> float32: key ``k >= 0`` is the float with bit pattern ``k``, key ``-1 - k`` its negative.

    Keys run in the order of the values, from ``-inf`` (``NEG_INF_KEY``) to ``+inf`` (``POS_INF_KEY``).
    """
    bits = np.where(keys >= 0, keys, (-(keys + 1)) | 0x80000000)
    return bits.astype(np.uint32).view(np.float32)


def _level_thresholds(index_of: Callable[[np.ndarray], np.ndarray], n_features: int, bits: int) -> np.ndarray:
    """Largest float32 ``r_k`` with ``index_of(r_k) < k``, for levels k = 1..M: [d, M] float32.

    Bisection on the ordered keys; ``hi`` starts one past ``+inf`` and is never evaluated.
    """
    levels = np.arange(1, n_thresholds(bits) + 1)[:, None]  # [M, 1]
    lo = np.full((levels.size, n_features), NEG_INF_KEY, dtype=np.int64)
    hi = np.full_like(lo, POS_INF_KEY + 1)
    while (hi - lo > 1).any():
        mid = lo + (hi - lo) // 2
        below = index_of(_floats(mid)) < levels
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return _floats(lo).T.copy()


def _probes(thresholds: np.ndarray, saved: SavedModel) -> np.ndarray:
    """Raw float32 rows [n, d] to check the encoder on: thresholds, their neighbours, extremes, random values."""
    finite = np.finfo(np.float32).max
    columns = thresholds.T  # [M, d]
    extremes = np.array([-np.inf, -finite, -0.0, 0.0, finite, np.inf], dtype=np.float32)
    rng = np.random.default_rng(0)
    spread = saved.x_mean + saved.x_scale * 3 * rng.standard_normal((N_RANDOM_PROBES, len(saved.x_mean)))
    with np.errstate(over="ignore"):  # beyond float32 a probe is +-inf, which is a probe too
        rows = [
            columns,
            np.nextafter(columns, np.float32(-np.inf)),
            np.nextafter(columns, np.float32(np.inf)),
            np.broadcast_to(extremes[:, None], (extremes.size, columns.shape[1])),
            spread.astype(np.float32),
        ]
    return np.concatenate(rows).astype(np.float32)


def _check_exportable(saved: SavedModel) -> None:
    """Refuse models without an edge half or with a standardization that is not increasing."""
    if saved.model.quantizer is None:
        raise ValueError("a full-precision model sends float features; nothing to export")
    scale = np.asarray(saved.x_scale, dtype=np.float64)
    if not (np.isfinite(scale).all() and (scale > 0).all() and np.isfinite(saved.x_mean).all()):
        raise ValueError("the model's x_scale must be finite and positive and its x_mean finite to export an encoder")


def build_encoder(saved: SavedModel) -> Encoder:
    """The exact device rule of ``saved`` (see the module docstring), checked against the model."""
    _check_exportable(saved)
    quantizer = saved.model.quantizer
    d = len(saved.feature_names)
    levels = _level_thresholds(lambda raw: edge_indices(saved, raw), d, saved.bits)
    if isinstance(quantizer, ThresholdQuantizer):
        ranks = threshold_ranks(quantizer.thresholds.detach().cpu()).numpy()
        thresholds = np.take_along_axis(levels, ranks, axis=1)
    else:
        ranks = np.broadcast_to(np.arange(levels.shape[1]), levels.shape).copy()
        thresholds = levels
    encoder = Encoder(
        saved.method, saved.bits, saved.dataset, list(saved.feature_names), thresholds, ranks,
        np.asarray(saved.x_mean, dtype=np.float64), np.asarray(saved.x_scale, dtype=np.float64),
    )
    probes = _probes(thresholds, saved)
    if not np.array_equal(encoder.indices(probes), edge_indices(saved, probes)):
        raise ValueError(
            f"the {saved.method} index of this model is not monotone in the raw value, so it cannot be exported"
        )
    return encoder


def _json_value(value: object) -> str:
    """Strict compact JSON, one line per inner list of a list of lists (one feature a line)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        return "[\n  " + ",\n  ".join(json.dumps(row, allow_nan=False) for row in value) + "\n ]"
    return json.dumps(value, allow_nan=False)


def _json_threshold(value: float) -> float | str:
    """A threshold for JSON: the number, or ``"Infinity"`` / ``"-Infinity"`` (JSON has no infinite numbers)."""
    return ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) else value


def encoder_json(encoder: Encoder, model_file: str = "") -> str:
    """``encoder.json``: the device rule, the wire layout and the model's standardization."""
    content = {
        "format": FORMAT,
        "method": encoder.method,
        "bits": encoder.bits,
        "dataset": encoder.dataset,
        "model_file": model_file,
        "n_features": len(encoder.features),
        "features": encoder.features,
        "payload_bytes_per_sample": encoder.payload_bytes,
        "encoding": ENCODING,
        "bit_order": BIT_ORDER,
        "thresholds": [[_json_threshold(v) for v in row] for row in encoder.thresholds.tolist()],
        "ranks": encoder.ranks.tolist(),
        "x_mean": encoder.x_mean.tolist(),
        "x_scale": encoder.x_scale.tolist(),
    }
    return "{\n" + ",\n".join(f" {json.dumps(key)}: {_json_value(value)}" for key, value in content.items()) + "\n}\n"


def _c_float(value: np.float32) -> str:
    """An exact C99 float constant: hexadecimal without trailing zeros, or ``INFINITY``."""
    if math.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    mantissa, exponent = float(value).hex().split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}f"


def _c_comment(text: str) -> str:
    """``text`` made safe inside a one-line C comment."""
    return "".join(c if c.isprintable() else "?" for c in text).replace("*/", "* /").replace("/*", "/ *")


def _c_floats(values: np.ndarray, per_line: int = 6) -> str:
    """Comma-separated C constants, ``per_line`` to a line."""
    lines = [", ".join(_c_float(v) for v in values[i : i + per_line]) for i in range(0, len(values), per_line)]
    return ",\n     ".join(lines)


def encoder_header(encoder: Encoder) -> str:
    """``encoder.h``: the thresholds and ``bsq_encode`` for one raw float32 sample, in C99."""
    rows = "\n".join(
        f"    /* {f}: {_c_comment(name)} */\n    {{{_c_floats(row)}}},"
        for f, (name, row) in enumerate(zip(encoder.features, encoder.thresholds))
    )
    what = _c_comment(f"{encoder.method} at {encoder.bits} bits{f' ({encoder.dataset})' if encoder.dataset else ''}")
    return f"""/* Device encoder for {what}, generated by python -m deployment.export.
 * bsq_encode(x, payload): x = one sample of BSQ_N_FEATURES raw float32 values (feature order of
 * the comments below), payload = BSQ_PAYLOAD_BYTES bytes, equal to quantization.wire.pack.
 * Index of feature f = number of thresholds that x[f] exceeds (strict >, NaN gives 0).
 * Compile as C99 or later, without -ffast-math or -Ofast, and not in a flush-to-zero or
 * denormals-are-zero mode: they treat denormal values and thresholds as 0. */
#ifndef BSQ_ENCODER_H
#define BSQ_ENCODER_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define BSQ_N_FEATURES {len(encoder.features)}
#define BSQ_BITS {encoder.bits}
#define BSQ_N_THRESHOLDS {encoder.thresholds.shape[1]}
#define BSQ_PAYLOAD_BYTES {encoder.payload_bytes}

/* Raw-unit thresholds, exact float32 values. */
static const float bsq_thresholds[BSQ_N_FEATURES][BSQ_N_THRESHOLDS] = {{
{rows}
}};

/* The transmitted index of feature f for the raw value x: 0 .. 2**BSQ_BITS - 1. */
static inline uint32_t bsq_index(int f, float x) {{
    uint32_t count = 0;
    for (int k = 0; k < BSQ_N_THRESHOLDS; ++k) count += x > bsq_thresholds[f][k];
    return count;
}}

/* Encode one raw sample x[BSQ_N_FEATURES] into payload[BSQ_PAYLOAD_BYTES]. */
static inline void bsq_encode(const float *x, uint8_t *payload) {{
    uint32_t position = 0; /* bit position in the payload, most significant bit of byte 0 first */
    memset(payload, 0, BSQ_PAYLOAD_BYTES);
    for (int f = 0; f < BSQ_N_FEATURES; ++f) {{
        uint32_t index = bsq_index(f, x[f]);
        for (int b = BSQ_BITS - 1; b >= 0; --b, ++position)
            payload[position >> 3] |= (uint8_t)(((index >> b) & 1u) << (7u - (position & 7u)));
    }}
}}

#endif /* BSQ_ENCODER_H */
"""


def export_encoder(saved: SavedModel, out_dir: str | Path, model_file: str = "") -> tuple[Path, Path]:
    """Write ``encoder.json`` and ``encoder.h`` for ``saved`` into ``out_dir``; return their paths."""
    encoder = build_encoder(saved)
    out = Path(out_dir)
    json_path, header_path = out / "encoder.json", out / "encoder.h"
    atomic_write_text(json_path, encoder_json(encoder, model_file))
    atomic_write_text(header_path, encoder_header(encoder))
    return json_path, header_path


def cloud_predict(
    saved: SavedModel, payload: bytes, raw_units: bool = False, n_samples: int | None = None, per_sample: bool = False
) -> np.ndarray:
    """Predictions [n], standardized or in target units, from a payload of :func:`quantization.wire.pack`,
    or with ``per_sample`` from one-sample payloads in a row (what ``bsq_encode`` writes per sample).

    For a classifier: its class scores (logits) [n, C], or with ``raw_units`` the class labels [n]
    (the label of the highest score; the first, on ties).
    """
    if per_sample and n_samples is not None:
        raise ValueError("n_samples is for one packed stream; one-sample payloads (per_sample=True) count themselves")
    d = len(saved.feature_names)
    index = unpack_samples(payload, saved.bits, d) if per_sample else unpack(payload, saved.bits, d, n_samples)
    saved.model.eval()
    with torch.inference_mode():
        out = saved.model.cloud(torch.from_numpy(index)).numpy()
    if saved.classes is not None:
        return saved.labels(out) if raw_units else out
    return out.astype(np.float64) * saved.y_scale + saved.y_mean if raw_units else out


def main(argv: list[str] | None = None) -> int:
    """Command line: export a saved model's encoder; errors as one sentence on stderr, exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m deployment.export",
        description="Write encoder.json and encoder.h (C99) for the device side of a saved model.",
    )
    parser.add_argument("model", help="a model file written by models.save_model (.pt)")
    parser.add_argument("--out", required=True, help="folder for encoder.json and encoder.h (created if missing)")
    args = parser.parse_args(argv)
    try:
        json_path, header_path = export_encoder(load_model(args.model), args.out, Path(args.model).name)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {json_path} and {header_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
