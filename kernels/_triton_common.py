"""What the Triton kernels share: tile sizes, launch specs and the tile code itself.

The labels kernel and both Gumbel kernels read the same z and codebook tiles and score
them the same way; the Gumbel backward regenerates the forward's scores (noise included)
instead of storing N x K of them, so both passes must call the one `gumbel_scores` below:
a second copy of that expression that drifted would silently give wrong gradients.

`KernelSpec` is the single description of a kernel's runtime arguments: the launchers
go through it and kernels/aot.py builds its compile signature from it, and it checks
itself against the kernel's own parameter list when the kernel module is imported.
A flag constexpr may switch on extra pointer arguments (``optional``): they default to
None in the kernel, and a None argument is a constant to Triton, so with the flag off
the kernel compiles exactly as it did before those arguments existed.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from ._common import HAS_TRITON

# Rows x codes per program, picked from the AOT compile (no spills, <= 64 KiB of shared
# memory on sm_80/sm_90) and, for the labels code tile, an H200 sweep: 64 x 128 ran
# 3.60 -> 2.72 ms at N = 40k, G = 4 and 0.42 -> 0.30 ms at 10k x 1 against 64 x 64
# (tile_sweep_h200.json, same labels). The Gumbel code tile stays 64: the backward
# already holds 254-255 registers per thread.
LABELS_BLOCK_N = 64
LABELS_BLOCK_K = 128
GUMBEL_BLOCK_N = 32
GUMBEL_BLOCK_K = 64
NUM_WARPS = 4

# The integer sizes every kernel takes, as typed by the JIT for values below 2**31.
SHAPE_ARGS = {"N": "i32", "G": "i32", "K": "i32", "d": "i32"}


def block_sizes(d: int, K: int, block_n: int, max_block_k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, BLOCK_D) for a problem with code dim `d` and `K` codes.

    tl.dot needs every block dim >= 16; d is padded to a power of two (padding is zero,
    so it changes no similarity), and small codebooks get a smaller code tile.
    """
    block_d = max(16, 1 << (d - 1).bit_length())
    block_k = min(max_block_k, max(16, 1 << (K - 1).bit_length()))
    return block_n, block_k, block_d


def _params(kernel: Callable) -> list[tuple[str, bool]]:
    """(name, is_constexpr) of a @triton.jit function, compiled or interpreted.

    Read from the Python signature: the interpreter's wrapper has no `params`. Annotations
    may be strings (``from __future__ import annotations``), hence the text test, which
    is also what Triton itself does.
    """
    signature = inspect.signature(kernel.fn)
    return [(p.name, "constexpr" in str(p.annotation)) for p in signature.parameters.values()]


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel as its launcher and the AOT compile both see it.

    ``arg_types`` lists the runtime arguments in the kernel's order with the type the
    JIT gives them at launch; "{lp}" stands for the element type of ``log_probs``,
    which the launcher passes through unconverted. ``optional`` maps the runtime
    arguments that only a flag uses to that flag: the launcher passes None for them
    when the flag is off (then they are constants, and compiled out).
    """

    name: str
    kernel: Callable
    arg_types: dict[str, str]
    block_n: int
    max_block_k: int
    optional: dict[str, str] = field(default_factory=dict)
    params: tuple[str, ...] = field(init=False)  # all of them, in the kernel's order
    constexprs: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        params = _params(self.kernel)
        runtime = [name for name, is_constexpr in params if not is_constexpr]
        if runtime != list(self.arg_types):
            raise TypeError(
                f"KernelSpec {self.name!r} lists arguments {list(self.arg_types)} but "
                f"{self.kernel.__name__} takes {runtime}: update the spec next to the kernel."
            )
        constexprs = tuple(n for n, is_c in params if is_c)
        for arg, flag in self.optional.items():
            if arg not in self.arg_types or flag not in constexprs:
                raise TypeError(
                    f"KernelSpec {self.name!r}: optional argument {arg!r} must be a runtime "
                    f"argument and its flag {flag!r} a constexpr of {self.kernel.__name__}."
                )
        object.__setattr__(self, "params", tuple(name for name, _ in params))
        object.__setattr__(self, "constexprs", constexprs)

    def blocks(self, d: int, K: int) -> dict[str, int]:
        block_n, block_k, block_d = block_sizes(d, K, self.block_n, self.max_block_k)
        return {"BLOCK_N": block_n, "BLOCK_K": block_k, "BLOCK_D": block_d}

    def launch(self, *args, **constexprs) -> None:
        """Run over a (row tiles, G) grid, with the tile sizes that `blocks` picks.

        `args` are all the runtime arguments in `arg_types` order (None for an optional
        one whose flag is off); they reach the kernel by name, as optional arguments
        follow the constexprs in its parameter list.
        """
        if len(args) != len(self.arg_types):
            raise TypeError(
                f"{self.name} takes {len(self.arg_types)} runtime arguments "
                f"({', '.join(self.arg_types)}), got {len(args)}."
            )
        bound = dict(zip(self.arg_types, args, strict=True))
        for arg, flag in self.optional.items():
            if (bound[arg] is not None) != bool(constexprs.get(flag, False)):
                raise TypeError(f"{self.name}: pass `{arg}` exactly when {flag} is set.")
        blocks = self.blocks(bound["d"], bound["K"])
        grid = (triton.cdiv(bound["N"], blocks["BLOCK_N"]), bound["G"])
        self.kernel[grid](**bound, **blocks, **constexprs, num_warps=NUM_WARPS)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from ._rng import col_keys_tl, gumbel_tl

    @triton.jit
    def load_z_tile(z_ptr, rows, row_ok, g, G, d, dims, dim_ok):
        """z[rows, g, :BLOCK_D] of a contiguous (N, G, d) tensor; padding rows/dims are 0."""
        z = tl.load(
            z_ptr + (rows[:, None] * G + g) * d + dims[None, :],
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        return z.to(tl.float32)

    @triton.jit
    def load_code_tile(codebook_ptr, codes, code_ok, g, K, d, dims, dim_ok):
        """codebook[g, codes, :BLOCK_D] of a contiguous (G, K, d) tensor; padding is 0."""
        c = tl.load(
            codebook_ptr + (g * K + codes[:, None]) * d + dims[None, :],
            mask=code_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        return c.to(tl.float32)

    @triton.jit
    def cosine_scores(z, c):
        """(BLOCK_N, BLOCK_K) similarities <z_n, c_j>.

        IEEE fp32, not TF32: labels must match the fp32 reference exactly.
        """
        return tl.dot(z, tl.trans(c), input_precision="ieee")

    @triton.jit
    def gumbel_scores(z, c, codes, inv_scale, row_key, key_col, NOISE: tl.constexpr):
        """(s, u): the noise-free scores s = <z, c> / logit_scale and u = s (+ Gumbel noise),
        the forward's and the ones the backward regenerates. `row_key` is unused (may be
        anything) without NOISE; a caller that drops s or u gets it compiled out."""
        s = cosine_scores(z, c) * inv_scale
        u = s
        if NOISE:
            u = s + gumbel_tl(row_key, col_keys_tl(codes, key_col))
        return s, u
