"""Counter-based Gumbel noise, bit-identical in plain torch and in Triton.

BiRQ's enhanced-label path samples one Gumbel variate per (frame, codebook, code). The
fused kernels never store that N x G x K tensor: they regenerate any element from its
coordinates. So the generator is a pure function of ``(seed, n, g, j)``:

    row_key  = hash32(seed_key_row ^ (n * G + g))
    col_key  = hash32(seed_key_col ^ j)
    bits     = hash32(row_key ^ col_key)
    u        = ((bits >> 9) + 0.5) * 2**-23        # in (0, 1), never 0 or 1, exact in fp32
    noise    = -log(-log(u))

``hash32`` is Wellons' "lowbias32" integer finaliser (a bijection on 32-bit words with
near-ideal avalanche). Because it is a bijection, the noise of one row never repeats a
code's input, and rows differ through ``row_key``. The two seed keys come from the
64-bit seed on the host, so a step/rank-derived seed changes every element.

Torch has no unsigned 32-bit arithmetic on the CPU, so the torch version holds uint32 bit
patterns in int32 tensors (same multiplication and xor bits; shifts masked to be logical).
"""

from __future__ import annotations

import torch

try:  # triton is optional: CPU-only installs of torch do not ship it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without triton
    triton = None
    tl = None

_MASK32 = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x846CA68B
_SEED_SALT_ROW = 0x243F6A88  # digits of pi, to separate the two seed keys
_SEED_SALT_COL = 0x85A308D3


def _hash32_int(x: int) -> int:
    """lowbias32 on a Python int (host side, for the seed keys)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * _M1) & _MASK32
    x ^= x >> 15
    x = (x * _M2) & _MASK32
    x ^= x >> 16
    return x


def seed_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys that a 64-bit seed contributes to every noise element."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int, got {type(seed).__name__}.")
    if seed < 0 or seed >= 2**64:
        raise ValueError(f"`seed` must be in [0, 2**64), got {seed}.")
    lo, hi = seed & _MASK32, seed >> 32
    base = _hash32_int(lo ^ _hash32_int(hi ^ 0x9E3779B9))
    return _hash32_int(base ^ _SEED_SALT_ROW), _hash32_int(base ^ _SEED_SALT_COL)


def as_int32(key: int) -> int:
    """A 32-bit key as a signed int32, so Triton types the kernel argument as i32.

    Kernels bitcast it back to uint32; without this, keys >= 2**31 would arrive as i64.
    """
    return key - 2**32 if key >= 2**31 else key


# The same constants as signed int32: torch multiplies int32 tensors with two's-complement
# wrap-around (vectorised mullo on CPU, native on CUDA), which is exactly uint32
# multiplication mod 2**32; the tests check the result bit for bit against Triton's uint32.
_M1_I32 = _M1
_M2_I32 = _M2 - 2**32


def _hash32_(x: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
    """lowbias32 in place on an int32 tensor holding uint32 bit patterns.

    torch's ``>>`` on int32 is arithmetic, so each shift is masked to be logical.
    """
    torch.bitwise_right_shift(x, 16, out=tmp)
    x ^= tmp.bitwise_and_(0xFFFF)
    x *= _M1_I32
    torch.bitwise_right_shift(x, 15, out=tmp)
    x ^= tmp.bitwise_and_(0x1FFFF)
    x *= _M2_I32
    torch.bitwise_right_shift(x, 16, out=tmp)
    x ^= tmp.bitwise_and_(0xFFFF)
    return x


def _keys(values: torch.Tensor, key: int) -> torch.Tensor:
    x = values.to(torch.int32) ^ as_int32(key)
    return _hash32_(x, torch.empty_like(x))


def gumbel_noise_rows(
    seed: int,
    row_ids: torch.Tensor,
    num_codes: int,
    *,
    col_start: int = 0,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Noise for flat rows ``row_ids`` (= n * G + g) and codes [col_start, num_codes).

    Returns float32 (len(row_ids), num_codes - col_start). This is the building block
    the chunked CPU path uses, one slab of rows at a time.
    """
    key_row, key_col = seed_keys(seed)
    device = row_ids.device if device is None else device
    # uint32 wrap of n * G + g: int64 first, then the low 32 bits as int32.
    rows = (row_ids.to(device=device, dtype=torch.int64) & _MASK32).to(torch.int32)
    cols = torch.arange(col_start, num_codes, device=device, dtype=torch.int32)
    bits = _keys(rows, key_row)[:, None] ^ _keys(cols, key_col)[None, :]
    _hash32_(bits, torch.empty_like(bits))
    return bits_to_gumbel_(bits)


def bits_to_gumbel_(bits: torch.Tensor) -> torch.Tensor:
    """uint32 bit patterns (in int32) -> Gumbel(0, 1) noise, float32.

    Only the top 23 bits are used: (k + 0.5) * 2**-23 is exact in fp32 for every
    k < 2**23, so u stays in [2**-24, 1 - 2**-24] and the noise in about [-2.8, 16.6].
    (With 24 bits, k = 2**24 - 1 rounds to u = 1.0 and the noise to +inf.)
    """
    k = torch.bitwise_right_shift(bits, 9).bitwise_and_(0x7FFFFF)
    u = k.to(torch.float32).add_(0.5).mul_(2.0**-23)
    return u.log_().neg_().log_().neg_()


def gumbel_noise(
    seed: int, N: int, G: int, K: int, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Materialise the Gumbel(0, 1) noise of the fused kernels, float32 (N, G, K).

    For tests and references only: the kernels never build this tensor.
    """
    for name, value in (("N", N), ("G", G), ("K", K)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be a non-negative int, got {value!r}.")
    if N * G >= 2**32:
        raise ValueError(f"N * G must be < 2**32 for the counter-based RNG, got {N * G}.")
    device = torch.device("cpu") if device is None else torch.device(device)
    rows = torch.arange(N * G, device=device, dtype=torch.int64)
    return gumbel_noise_rows(seed, rows, K, device=device).view(N, G, K)


if triton is not None:

    @triton.jit
    def hash32_tl(x):
        """lowbias32 on uint32 tensors (wrap-around multiplication is native here)."""
        x = x ^ (x >> 16)
        x = x * 0x7FEB352D
        x = x ^ (x >> 15)
        x = x * 0x846CA68B
        x = x ^ (x >> 16)
        return x

    @triton.jit
    def gumbel_tl(row_key, col_key):
        """Gumbel noise for a (BLOCK_N, BLOCK_K) tile from per-row and per-code keys."""
        bits = hash32_tl(row_key[:, None] ^ col_key[None, :])
        # Top 23 bits: (k + 0.5) * 2**-23 is exact in fp32, so 0 < u < 1 (see bits_to_gumbel_).
        u = ((bits >> 9).to(tl.float32) + 0.5) * 1.1920928955078125e-07  # 2**-23
        return -tl.log(-tl.log(u))

    @triton.jit
    def row_keys_tl(rows, g, G, key_row):
        """Per-row keys; ``key_row`` is the i32 from `as_int32`.

        tl.cast, not ``.to``: on a GPU, Triton specialises an int argument equal to 1
        into a Python constant (G = 1, or a key of 1), which has no ``.to``.
        """
        flat = rows.to(tl.uint32) * tl.cast(G, tl.uint32) + g.to(tl.uint32)
        return hash32_tl(flat ^ tl.cast(key_row, tl.uint32, bitcast=True))

    @triton.jit
    def col_keys_tl(cols, key_col):
        return hash32_tl(cols.to(tl.uint32) ^ tl.cast(key_col, tl.uint32, bitcast=True))
