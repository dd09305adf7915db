"""The wire format: bit layout, round trips, payload sizes and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployment import payload_table
from quantization.wire import pack, payload_bytes, unpack, unpack_samples


def _bit_string_reference(indices: np.ndarray, bits: int) -> bytes:
    """The documented layout written out slowly: MSB-first values, MSB-first bytes, zero padding."""
    stream = "".join(format(int(v), f"0{bits}b") for v in indices.ravel())
    stream += "0" * (-len(stream) % 8)
    return bytes(int(stream[i : i + 8], 2) for i in range(0, len(stream), 8))


def test_hand_written_layout() -> None:
    # 101 010 111 000 -> 10101011 1000(0000)
    assert pack(np.array([[5, 2], [7, 0]]), 3) == bytes([0xAB, 0x80])
    assert unpack(bytes([0xAB, 0x80]), 3, 2).tolist() == [[5, 2], [7, 0]]
    assert pack([[1, 2, 3]], 8) == bytes([1, 2, 3])
    assert pack([[0xA, 0x5]], 4) == bytes([0xA5])


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("shape", [(7, 3), (1, 1), (5, 81), (0, 4), (3, 11)])
def test_round_trip(bits: int, shape: tuple[int, int]) -> None:
    n, d = shape
    rng = np.random.default_rng(bits * 100 + n + d)
    indices = rng.integers(0, 2**bits, size=shape)
    payload = pack(indices, bits)
    assert len(payload) == payload_bytes(n, d, bits) == -(-n * d * bits // 8)
    assert payload == _bit_string_reference(indices, bits)
    decoded = unpack(payload, bits, d, n_samples=n)
    assert decoded.dtype == np.int64 and np.array_equal(decoded, indices)
    if d * bits >= 8:  # the sample count follows from the length
        assert np.array_equal(unpack(payload, bits, d), indices)


def test_extremes_and_torch_input() -> None:
    for bits in range(2, 9):
        top = 2**bits - 1
        indices = torch.tensor([[0, top, top], [top, 0, 1]])
        assert np.array_equal(unpack(pack(indices, bits), bits, 3, n_samples=2), indices.numpy())
    assert pack(torch.full((2, 4), 3, dtype=torch.int64), 2) == bytes([0xFF, 0xFF])


def test_short_samples_need_the_count() -> None:
    # d * bits < 8: three 2-bit samples fill 6 bits, the padding holds a fourth zero value
    payload = pack([[1], [2], [3]], 2)
    assert payload == bytes([0b01101100])
    assert unpack(payload, 2, 1).tolist() == [[1], [2], [3], [0]]
    assert unpack(payload, 2, 1, n_samples=3).tolist() == [[1], [2], [3]]


@pytest.mark.parametrize("bits", [1, 9, 0, 2.5, True])
def test_bits_outside_protocol(bits) -> None:
    with pytest.raises(ValueError, match="bits must be a whole number from 2 to 8"):
        pack([[0]], bits)
    with pytest.raises(ValueError, match="bits must be a whole number from 2 to 8"):
        unpack(b"\x00", bits, 1)


def test_numpy_integer_bits_and_features() -> None:
    # the hand-written layout of test_hand_written_layout, with NumPy integers for bits and n_features
    assert pack(np.array([[5, 2], [7, 0]]), np.int64(3)) == bytes([0xAB, 0x80])
    decoded = unpack(bytes([0xAB, 0x80]), np.int64(3), np.int32(2))
    assert decoded.dtype == np.int64 and decoded.tolist() == [[5, 2], [7, 0]]
    assert payload_bytes(2, 2, np.uint8(3)) == 2
    with pytest.raises(ValueError, match="n_features must be a whole number >= 1, got 0"):
        unpack(b"\x00", 2, np.int64(0))


def test_bad_indices() -> None:
    with pytest.raises(ValueError, match=r"must lie in 0\.\.7 for 3 bits"):
        pack([[8, 0]], 3)
    with pytest.raises(ValueError, match=r"must lie in 0\.\.3"):
        pack(np.array([[-1]]), 2)
    with pytest.raises(ValueError, match="must be integers"):
        pack(np.array([[0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="shape"):
        pack(np.array([1, 2]), 2)


def test_wrong_payload_length() -> None:
    # 3 features at 3 bits: 9 bits a sample, so 1 byte is no whole sample and 2 bytes are one
    with pytest.raises(ValueError, match="not a whole number of samples of 3 features at 3 bits"):
        unpack(b"\x00", 3, 3)
    with pytest.raises(ValueError, match="is not 2 samples"):
        unpack(b"\x00\x00", 3, 3, n_samples=2)
    with pytest.raises(ValueError, match="padding bits"):
        unpack(bytes([0, 0x01]), 3, 3)
    with pytest.raises(ValueError, match="n_features must be a whole number >= 1"):
        unpack(b"\x00", 3, 0)


def test_one_sample_payloads_in_a_row() -> None:
    # 3 features at 3 bits: 9 bits, so every sample is 2 bytes with 7 padding bits, 3 samples 6 bytes;
    # pack of the three at once is 27 bits, 4 bytes: the two layouts differ
    indices = np.array([[7, 0, 5], [1, 2, 3], [0, 0, 0]])
    rows = [0b11100010, 0b10000000, 0b00101001, 0b10000000, 0, 0]  # 111 000 101|0000000, 001 010 011|0000000, ...
    stream = bytes(rows)
    assert stream == b"".join(pack(row[None], 3) for row in indices) and len(pack(indices, 3)) == 4
    np.testing.assert_array_equal(unpack_samples(stream, 3, 3), indices)
    assert unpack_samples(b"", 3, 3).shape == (0, 3)
    with pytest.raises(ValueError, match="5 bytes are not a whole number of one-sample payloads of 2 bytes"):
        unpack_samples(stream[:5], 3, 3)
    with pytest.raises(ValueError, match="padding bits of each sample's last byte must be zero"):
        unpack_samples(bytes([0, 1]), 3, 3)
    with pytest.raises(ValueError, match="n_features must be a whole number >= 1"):
        unpack_samples(stream, 3, 0)


def test_payload_table() -> None:
    table = payload_table()
    assert list(table.index) == ["california", "fried", "superconduct", "cpu_act", "sulfur", "wine_quality"]
    assert list(table.columns) == ["features"] + [f"{b} bits" for b in range(2, 9)] + ["float32"]
    assert table.loc["california"].tolist() == [8, 2, 3, 4, 5, 6, 7, 8, 32]
    assert table.loc["superconduct", "3 bits"] == 31 and table.loc["superconduct", "float32"] == 324
    assert payload_table({"toy": 3}).loc["toy"].tolist() == [3, 1, 2, 2, 2, 3, 3, 3, 12]
