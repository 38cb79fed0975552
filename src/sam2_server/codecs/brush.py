"""Label Studio's brush RLE: `label_studio_sdk.converter.brush.mask2rle`, without the SDK.

Label Studio stores a brush region as a bit-packed run-length code of the
mask's RGBA bytes (thi.ng's rle-pack, which its frontend decodes): a 32-bit
value count, a 5-bit word size minus one (8 bits), four 4-bit run-length
field sizes minus one (3, 4, 8, 16 bits), then per run a flag bit (1: a run
of one repeated value, 0: literal values), a 2-bit index into the field
sizes, the run length minus one in that many bits, and the 8-bit value.
The SDK's encoder builds this as a Python string of '0'/'1' characters and
runs of over 65536 values as chunks of 65536; this module writes exactly the
same bytes with numpy, run by run rather than bit by bit, and checks its
output against the SDK's in tests/integrations/test_labelstudio.py.

The SDK is not a dependency of the server: label-studio-sdk pulls in its own
HTTP client, pydantic pins and image libraries for one 60-line function.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 8
RLE_SIZES = (3, 4, 8, 16)  # bits of the run-length field, by the 2-bit index
_LONGEST = 1 << RLE_SIZES[-1]  # the most values one code repeats (65536)
_CHUNK_CODES = 1 << 20  # codes turned into bits at once: bounds the encoder's memory

# (flag and index bits, length-field bits) by category: a lone value, then the
# repeated runs whose length fits 3, 4, 8 and 16 bits. A lone value is written
# as the SDK writes it: flag 0, index 0, length 0 (one literal).
_CATEGORIES = ((0b000, 3), (0b100, 3), (0b101, 4), (0b110, 8), (0b111, 16))


def mask2rle(mask: np.ndarray) -> list[int]:
    """`label_studio_sdk.converter.brush.mask2rle(mask * 255)` for a 2-D bool mask.

    Each pixel becomes four equal RGBA bytes (0 or 255), so the runs are the
    mask's own runs, four times as long.
    """
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is 2-D, got shape {mask.shape}")
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    lengths, values = _runs(flat)
    return _pack(flat.size * 4, lengths * 4, np.where(values, 255, 0).astype(np.uint8))


def encode_rle(values: np.ndarray) -> list[int]:
    """`label_studio_sdk.converter.brush.encode_rle` (8-bit words) for a 1-D array of bytes."""
    array = np.asarray(values).ravel()
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError("brush RLE words are 8-bit: values must be in [0, 255]")
    lengths, run_values = _runs(array.astype(np.uint8))
    return _pack(array.size, lengths, run_values)


def decode_rle(rle: list[int] | bytes) -> np.ndarray:
    """The values an RLE holds, as `label_studio_sdk.converter.brush.decode_rle` gives them.

    A brush mask of H x W is `decode_rle(rle).reshape(H, W, 4)[:, :, 3]`.
    Raises ValueError on a code that is cut short or runs past its count.
    """
    bits = np.unpackbits(np.frombuffer(bytes(rle), dtype=np.uint8))
    reader = _BitReader(bits)
    count = reader.read(32)
    word = reader.read(5) + 1
    sizes = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < count:
        repeated = reader.read(1)
        end = i + 1 + reader.read(sizes[reader.read(2)])
        if end > count:
            raise ValueError(f"brush RLE: a run ends at {end}, past its {count} values")
        if repeated:
            out[i:end] = reader.read(word)
        else:
            for k in range(i, end):
                out[k] = reader.read(word)
        i = end
    return out


def decode_mask(rle: list[int] | bytes, height: int, width: int) -> np.ndarray:
    """The H x W bool mask of a brush RLE (its alpha channel, non-zero)."""
    values = decode_rle(rle)
    if values.size != height * width * 4:
        raise ValueError(f"brush RLE holds {values.size} values, not {height}x{width}x4")
    return values.reshape(height, width, 4)[:, :, 3] > 0


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths and values of the runs of equal neighbours in a 1-D array."""
    if values.size == 0:
        raise ValueError("an empty array has no brush RLE")
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    lengths = np.diff(ends, prepend=-1).astype(np.int64)
    return lengths, values[ends]


def _pack(count: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """Header and codes, bit-packed with the SDK's padding (1 to 8 zero bits at the end)."""
    if count >= 1 << 32:
        raise ValueError(f"{count} values do not fit brush RLE's 32-bit count")
    header = (count << 21) | ((WORD_BITS - 1) << 16)
    for position, size in enumerate(RLE_SIZES):
        header |= (size - 1) << (12 - 4 * position)
    widths, codes = _codes(lengths, values.astype(np.int64))
    out = bytearray()
    carry = _bits(np.array([53]), np.array([header]))
    for start in range(0, codes.size, _CHUNK_CODES):
        stop = start + _CHUNK_CODES
        bits = np.concatenate([carry, _bits(widths[start:stop], codes[start:stop])])
        whole = bits.size - bits.size % 8
        out += np.packbits(bits[:whole]).tobytes()
        carry = bits[whole:]
    padding = np.zeros(8 - carry.size % 8, dtype=np.uint8)  # the SDK pads 8 bits, never 0
    out += np.packbits(np.concatenate([carry, padding])).tobytes()
    return list(out)


def _codes(lengths: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bit width, code) of every code, in order; a run past 65536 values is several codes.

    As the SDK writes it, a run longer than 256 values is `(L - 1) // 65536`
    codes of 65536 values, then one 16-bit code for the rest, whatever its size.
    """
    long = lengths > 256
    chunks = np.where(long, (lengths - 1) // _LONGEST, 0)
    per_run = chunks + 1
    run = np.repeat(np.arange(lengths.size), per_run)
    first = np.cumsum(per_run) - per_run
    last = np.arange(run.size) - first[run] == chunks[run]
    length = np.where(last, lengths[run] - chunks[run] * _LONGEST, _LONGEST)
    category = np.where(
        ~last | long[run],
        4,
        np.select(
            [lengths[run] == 1, lengths[run] <= 8, lengths[run] <= 16],
            [0, 1, 2],
            default=3,
        ),
    )
    prefix = np.array([c[0] for c in _CATEGORIES], dtype=np.int64)[category]
    field = np.array([c[1] for c in _CATEGORIES], dtype=np.int64)[category]
    widths = 3 + field + WORD_BITS
    codes = (prefix << (field + WORD_BITS)) | ((length - 1) << WORD_BITS) | values[run]
    return widths, codes


def _bits(widths: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The codes' bits, most significant first, each code `width` bits long (at most 64)."""
    if codes.size == 0:
        return np.zeros(0, dtype=np.uint8)
    aligned = (codes.astype(np.uint64) << (64 - widths).astype(np.uint64)).astype(">u8")
    bits = np.unpackbits(aligned.view(np.uint8)).reshape(codes.size, 64)
    return bits[np.arange(64) < widths[:, None]]


class _BitReader:
    """Fields of a bit string, most significant bit first (as a str: int(..., 2) is fast)."""

    def __init__(self, bits: np.ndarray) -> None:
        self.bits = (bits + ord("0")).astype(np.uint8).tobytes().decode("ascii")
        self.i = 0

    def read(self, size: int) -> int:
        if self.i + size > len(self.bits):
            raise ValueError("brush RLE is cut short")
        value = int(self.bits[self.i : self.i + size], 2)
        self.i += size
        return value
