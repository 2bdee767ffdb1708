"""Tile sizes of the Triton quantizer kernels, swept on a CUDA GPU (not run by CI).

    python benchmarks/tile_sweep.py [--out FILE.json]

Times `_rpq_labels_kernel` and the Gumbel forward/backward kernels alone (their inputs
z, codebook, log_probs prepared once) with triton.testing.do_bench (median) for each
(BLOCK_N, BLOCK_K, num_warps), and checks each labels config against the eager reference.
The shipped sizes are the LABELS_BLOCK_*, GUMBEL_BLOCK_* and NUM_WARPS constants of
kernels/_triton_common.py (`block_sizes` there shrinks the code tile for small K).
"""

# ruff: noqa: B023 - the closures below run inside the iteration that defines them
from __future__ import annotations

import argparse
import itertools
import json

import torch
import triton
from birq_kernels._common import project_normalize
from birq_kernels._rng import as_int32, seed_keys
from birq_kernels.gumbel_rpq import _gumbel_rpq_bwd_kernel, _gumbel_rpq_fwd_kernel
from birq_kernels.rpq_labels import _rpq_labels_kernel, reference_rpq_labels
from quantizer import K, _inputs, d


def sweep_labels(N, G, rows):
    x, projection, codebook = _inputs(N, G, "cuda")  # the quantizer benchmark's inputs
    z = project_normalize(x, projection)[0].contiguous()
    expected = reference_rpq_labels(x, projection, codebook)
    for block_n, block_k, warps in itertools.product((32, 64, 128), (64, 128), (4, 8)):
        labels = torch.full((N, G), -1, device="cuda", dtype=torch.int64)

        def run():
            _rpq_labels_kernel[(triton.cdiv(N, block_n), G)](
                z, codebook, labels, N, G, K, d,
                BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=16, num_warps=warps,
            )  # fmt: skip

        try:
            ms = triton.testing.do_bench(run, warmup=10, rep=40, return_mode="median")
        except Exception as e:  # noqa: BLE001 - out of resources etc.
            print(f"labels N={N} G={G} {block_n}x{block_k} w{warps}: {type(e).__name__}")
            continue
        agree = (labels == expected).float().mean().item()
        rows.append(dict(kernel="labels", N=N, G=G, BLOCK_N=block_n, BLOCK_K=block_k,
                         num_warps=warps, ms=ms, agree=agree))  # fmt: skip
        print(
            f"labels N={N} G={G} {block_n:>3}x{block_k:<3} w{warps}: {ms:.3f} ms agree {agree:.6f}"
        )


def sweep_gumbel(N, G, rows):
    x, projection, codebook = _inputs(N, G, "cuda")  # the quantizer benchmark's inputs
    z = project_normalize(x, projection)[0].contiguous()
    lp = torch.log_softmax(torch.randn(N, G, K, device="cuda"), dim=-1)
    kr, kc = (as_int32(k) for k in seed_keys(1))
    labels = torch.empty(N, G, device="cuda", dtype=torch.int64)
    loss = torch.empty(N, G, device="cuda")
    stats = torch.empty(N, G, 3, device="cuda")
    grad_loss, grad_z, grad_lp = (
        torch.ones(N, G, device="cuda"),
        torch.empty_like(z),
        torch.empty_like(lp),
    )
    for block_n, block_k, warps in itertools.product((16, 32, 64), (64,), (4, 8)):
        grid = (triton.cdiv(N, block_n), G)
        kw = dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=16, num_warps=warps)

        def fwd():
            _gumbel_rpq_fwd_kernel[grid](
                z, codebook, lp, labels, loss, stats, N, G, K, d, *lp.stride(),
                10.0, 1.0, kr, kc, NOISE=True, **kw,
            )  # fmt: skip

        def bwd():
            _gumbel_rpq_bwd_kernel[grid](
                z, codebook, lp, labels, stats, grad_loss, grad_z, grad_lp, N, G, K, d,
                *lp.stride(), 10.0, 1.0, kr, kc, NOISE=True, WRITE_GRAD_LP=True, **kw,
            )  # fmt: skip

        for name, fn in (("gumbel_fwd", fwd), ("gumbel_bwd", bwd)):
            try:
                ms = triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
            except Exception as e:  # noqa: BLE001
                print(f"{name} {block_n}x{block_k} w{warps}: {type(e).__name__}")
                continue
            rows.append(dict(kernel=name, N=N, G=G, BLOCK_N=block_n, BLOCK_K=block_k,
                             num_warps=warps, ms=ms))  # fmt: skip
            print(f"{name} N={N} G={G} {block_n:>3}x{block_k:<3} w{warps}: {ms:.3f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="tile_sweep.json")
    args = parser.parse_args()
    rows: list[dict] = []
    try:
        sweep_labels(40_000, 4, rows)
        sweep_labels(10_000, 1, rows)
        sweep_gumbel(10_000, 1, rows)
    finally:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "triton": triton.__version__,
                       "rows": rows}, f, indent=1)  # fmt: skip
    for kernel in ("labels", "gumbel_fwd", "gumbel_bwd"):
        for (N, G), group in itertools.groupby(
            [r for r in rows if r["kernel"] == kernel], key=lambda r: (r["N"], r["G"])
        ):
            best = sorted(group, key=lambda r: r["ms"])[:3]
            print(
                kernel,
                N,
                G,
                "best:",
                [(r["BLOCK_N"], r["BLOCK_K"], r["num_warps"], round(r["ms"], 3)) for r in best],
            )


if __name__ == "__main__":
    main()
