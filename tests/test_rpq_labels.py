import pytest
import torch
import torch.nn.functional as F
from birq_kernels import reference_rpq_labels, rpq_labels
from birq_kernels._common import first_argmax
from conftest import make_quantizer, signed_one_hot_codebook

# N, D, G, d, K: D and K off powers of two and off every block size, N = 1, G > 1,
# d below and above 16, a K smaller than one argmax block and one just past a block.
SHAPES = [
    (1, 80, 1, 16, 8192),
    (37, 320, 1, 16, 1000),
    (513, 83, 4, 16, 257),
    (130, 57, 2, 12, 129),
    (64, 160, 3, 24, 3001),
    (9, 7, 2, 3, 5),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_chunked_equals_reference_fp32(shape):
    x, projection, codebook = make_quantizer(*shape, seed=sum(shape))
    expected = reference_rpq_labels(x, projection, codebook)
    got = rpq_labels(x, projection, codebook, backend="chunked")
    assert got.dtype == torch.int64 and got.shape == (shape[0], shape[2])
    assert torch.equal(got, expected)
    assert torch.equal(rpq_labels(x, projection, codebook), expected)  # auto -> chunked on CPU


def test_labels_are_the_nearest_codes_in_l2():
    x, projection, codebook = make_quantizer(200, 40, 2, 16, 300, seed=3)
    labels = rpq_labels(x, projection, codebook)
    z = F.normalize(torch.einsum("nD,gDd->ngd", x, projection), dim=-1)
    dist = torch.cdist(z.transpose(0, 1), codebook)  # (G, N, K)
    assert torch.equal(labels, dist.argmin(dim=-1).t())


def test_slab_boundaries_do_not_matter(monkeypatch):
    import birq_kernels._common as common

    x, projection, codebook = make_quantizer(300, 48, 2, 16, 700, seed=4)
    expected = reference_rpq_labels(x, projection, codebook)
    for budget in (700, 7 * 700, 10_000):  # 1 row, 7 rows, 14 rows per slab
        monkeypatch.setattr(common, "CHUNK_ELEMENTS", budget)
        assert torch.equal(rpq_labels(x, projection, codebook, backend="chunked"), expected)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_exact_ties_resolve_to_first_index(backend):
    projection, codebook = signed_one_hot_codebook(K=700, d=16)
    x = torch.full((4, 16), -0.1)
    x[0, 5] = 1.0  # +e_5: codes 5, 37, 69, ..., 677 tie (also across argmax blocks)
    x[1, 2] = -2.0  # -e_2: first at code 18
    x[2] = 0.0  # every similarity is 0
    x[3, 15] = 1.0  # +e_15: code 15 and, after the last full 128-block, 687 tie
    labels = rpq_labels(x, projection, codebook, backend=backend)
    assert labels[:, 0].tolist() == [5, 18, 0, 15]


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_all_negative_similarities(backend):
    # Codes in the positive orthant, frames in the negative one: every similarity < 0,
    # so a zero-padded code would win if padding were 0 instead of -inf.
    gen = torch.Generator().manual_seed(1)
    K, d = 333, 16
    codebook = F.normalize(torch.rand(1, K, d, generator=gen) + 0.05, dim=-1)
    x = -(torch.rand(50, d, generator=gen) + 0.05)
    projection = torch.eye(d)[None]
    sims = F.normalize(x, dim=-1) @ codebook[0].t()
    assert (sims < 0).all()
    labels = rpq_labels(x, projection, codebook, backend=backend)
    assert torch.equal(labels[:, 0], sims.argmax(dim=1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    """Stated tolerance: labels of bf16/fp16 frames equal the fp32 reference on the same
    (upcast) frames for >= 99.5 % of frames, and any disagreement is a near-tie (the two
    codes' similarities differ by < 1e-4). Half-precision projections and codebooks
    (rows normalised in fp32, then rounded) are accepted the same way."""
    x, projection, codebook = make_quantizer(2000, 96, 2, 16, 1024, seed=7, dtype=dtype)
    for proj, codes in ((projection, codebook), (projection.to(dtype), codebook.to(dtype))):
        expected = reference_rpq_labels(x, proj, codes)
        got = rpq_labels(x, proj, codes)
        agree = (got == expected).float().mean().item()
        assert agree >= 0.995
        z = F.normalize(torch.einsum("nD,gDd->ngd", x.float(), proj.float()), dim=-1)
        sims = torch.einsum("ngd,gkd->ngk", z, codes.float())
        gap = (sims.gather(2, expected[..., None]) - sims.gather(2, got[..., None])).abs()
        assert gap.max().item() < 1e-4


@pytest.mark.parametrize("K", [5, 256, 257, 1000, 8192])
def test_first_argmax_matches_torch_argmax(K):
    gen = torch.Generator().manual_seed(K)
    scores = torch.randn(33, K, generator=gen).round(decimals=1)  # many exact ties
    scores[0] = -1.0  # a whole row tied
    scores[1, -1] = 100.0  # maximum in the tail block
    assert torch.equal(first_argmax(scores), scores.argmax(dim=1))


class TestBadInput:
    def setup_method(self):
        self.x, self.projection, self.codebook = make_quantizer(10, 20, 2, 16, 50)

    def test_empty_frames(self):
        with pytest.raises(ValueError, match=r"`x` is empty"):
            rpq_labels(self.x[:0], self.projection, self.codebook)

    def test_input_dim_mismatch(self):
        with pytest.raises(ValueError, match=r"`projection` has input dim 20"):
            rpq_labels(self.x[:, :19], self.projection, self.codebook)

    def test_codebook_count_mismatch(self):
        with pytest.raises(ValueError, match=r"`codebook` has 1 codebooks"):
            rpq_labels(self.x, self.projection, self.codebook[:1])

    def test_code_dim_mismatch(self):
        with pytest.raises(ValueError, match=r"`codebook` has code dim 8"):
            rpq_labels(self.x, self.projection, F.normalize(self.codebook[..., :8], dim=-1))

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match=r"`x` must be 2-D"):
            rpq_labels(self.x[None], self.projection, self.codebook)
        with pytest.raises(ValueError, match=r"`projection` must be 3-D"):
            rpq_labels(self.x, self.projection[0], self.codebook)

    def test_integer_input(self):
        with pytest.raises(ValueError, match=r"`x` must be a floating-point tensor"):
            rpq_labels(self.x.long(), self.projection, self.codebook)

    def test_dtype_mismatch(self):
        with pytest.raises(ValueError, match=r"`codebook` dtype torch.float16 does not match"):
            rpq_labels(self.x, self.projection, self.codebook.half())

    def test_codebook_not_normalised(self):
        with pytest.raises(ValueError, match=r"`codebook` rows must be L2-normalised"):
            rpq_labels(self.x, self.projection, self.codebook * 2.0)
        # The check can be turned off once the codebook is known to be good.
        rpq_labels(self.x, self.projection, self.codebook * 2.0, check_codebook_norm=False)

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match=r"`backend` must be one of"):
            rpq_labels(self.x, self.projection, self.codebook, backend="cuda")

    def test_triton_backend_needs_cuda(self):
        with pytest.raises(ValueError, match=r"`backend='triton'` needs CUDA tensors"):
            rpq_labels(self.x, self.projection, self.codebook, backend="triton")
