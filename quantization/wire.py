"""The wire format between device and server: ``b``-bit indices packed into bytes, and back.

Bit order: the values are taken row by row (sample 0 feature 0, sample 0 feature 1, ...,
then sample 1, ...); each value is written with ``b`` bits, most significant bit first; the
bits are concatenated into one stream and the stream is cut into bytes, the first bit of the
stream being the most significant bit of the first byte; the last byte is zero-padded. This is
``np.packbits`` of the row-major ``[n, d, b]`` bit matrix. ``n`` samples of ``d`` features take
``ceil(n * d * b / 8)`` bytes; one sample alone takes ``ceil(d * b / 8)`` bytes, which is what
the exported C encoder writes per sample (``deployment.export``; :func:`unpack_samples` reads
such samples in a row).
"""

from __future__ import annotations

import numpy as np
import torch

from core.checks import check_bits, whole_number


def payload_bytes(n_samples: int, n_features: int, bits: int) -> int:
    """Bytes that ``n_samples`` samples of ``n_features`` ``bits``-bit values take on the wire."""
    return -(-n_samples * n_features * check_bits(bits) // 8)


def _msb_first(bits: int) -> np.ndarray:
    """Bit positions of a ``bits``-bit value, most significant first."""
    return np.arange(bits - 1, -1, -1, dtype=np.int64)


def _as_indices(indices: np.ndarray | torch.Tensor, bits: int) -> np.ndarray:
    """Validated int64 numpy indices [n, d] in ``0..2**bits - 1``."""
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    values = np.asarray(indices)
    if values.ndim != 2:
        raise ValueError(f"indices must have shape [n_samples, n_features], got shape {values.shape}")
    if values.dtype == np.bool_ or not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {values.dtype}")
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= 2**bits):
        raise ValueError(f"indices must lie in 0..{2**bits - 1} for {bits} bits, got {values.min()}..{values.max()}")
    return values


def pack(indices: np.ndarray | torch.Tensor, bits: int) -> bytes:
    """Indices [n, d] in ``0..2**bits - 1`` -> the ``ceil(n * d * bits / 8)``-byte payload."""
    bits = check_bits(bits)
    values = _as_indices(indices, bits)
    bit_matrix = ((values[..., None] >> _msb_first(bits)) & 1).astype(np.uint8)  # [n, d, bits]
    return np.packbits(bit_matrix.ravel()).tobytes()


def unpack(payload: bytes, bits: int, n_features: int, n_samples: int | None = None) -> np.ndarray:
    """A payload of :func:`pack` -> int64 indices [n, d].

    ``n`` defaults to ``floor(len(payload) * 8 / (d * bits))``; pass ``n_samples`` where
    ``d * bits < 8``, since then the zero padding of the last byte can hold whole values.
    """
    bits, n_features = check_bits(bits), whole_number("n_features", n_features, minimum=1)
    data = _bytes_of(payload)
    sample_bits = n_features * bits
    n = data.size * 8 // sample_bits if n_samples is None else whole_number("n_samples", n_samples, minimum=0)
    if data.size != payload_bytes(n, n_features, bits):
        raise ValueError(
            f"a payload of {data.size} bytes is not {'a whole number of' if n_samples is None else n} samples of "
            f"{n_features} features at {bits} bits (n samples take ceil(n * {sample_bits} / 8) bytes)"
        )
    return _indices(np.unpackbits(data), n * sample_bits, n_features, bits, "the last payload byte")


def unpack_samples(payload: bytes, bits: int, n_features: int) -> np.ndarray:
    """One-sample payloads in a row -> int64 indices [n, d].

    Each sample is a payload of its own, ``ceil(d * bits / 8)`` bytes with its last byte
    zero-padded: what the exported C encoder's ``bsq_encode`` writes per sample. (Where
    ``d * bits`` is not a multiple of 8 this differs from :func:`pack` of n samples at once.)
    """
    bits, n_features = check_bits(bits), whole_number("n_features", n_features, minimum=1)
    data = _bytes_of(payload)
    size = payload_bytes(1, n_features, bits)
    if data.size % size:
        raise ValueError(f"{data.size} bytes are not a whole number of one-sample payloads of {size} bytes")
    rows = data.reshape(-1, size)
    return _indices(np.unpackbits(rows, axis=1), n_features * bits, n_features, bits, "each sample's last byte")


def _bytes_of(payload: bytes | bytearray | memoryview | np.ndarray | torch.Tensor) -> np.ndarray:
    """The bytes of a payload as uint8 [L]: bytes, bytearray, or a buffer, array or CPU tensor of one-byte items."""
    if isinstance(payload, torch.Tensor):
        payload = payload.numpy()
    try:
        view = memoryview(payload)
    except TypeError:
        view = None
    if view is None or view.itemsize != 1:
        kind = f"items of {view.itemsize} bytes" if view is not None else type(payload).__name__
        raise TypeError(f"a payload must be bytes (as pack and the C encoder write them), got {kind}; "
                        "convert byte values with bytes(values) or values.astype(np.uint8)")
    return np.frombuffer(view if view.c_contiguous else view.tobytes(), dtype=np.uint8)


def _indices(stream: np.ndarray, used: int, n_features: int, bits: int, padding: str) -> np.ndarray:
    """Unpacked bits [..., L] whose first ``used`` (per row) hold values -> int64 indices [n, d];
    the remaining bits are the zero padding of ``padding``."""
    if stream[..., used:].any():
        raise ValueError(f"the padding bits of {padding} must be zero")
    return stream[..., :used].reshape(-1, n_features, bits).astype(np.int64) @ (1 << _msb_first(bits))

