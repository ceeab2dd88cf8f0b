"""The quantized linear kernels (qlinear.py: int8, int4 with float activations; qlinear_a8.py:
w8a8, w4a8 with int8 activations): batch invariance on every instruction-set path this CPU runs
(AVX-512, AVX2 + FMA and scalar are each forced in turn; a path the CPU lacks is skipped with the
reason; the int8-activation "avx512" path needs VNNI and runs the AVX2 one without it), agreement
of the paths, and accuracy against a float64 reference.

The first test in a fresh cache builds the extension (about a minute); where it cannot be built
(no compiler / ninja) every test here skips with the reason.
"""

from __future__ import annotations

import pytest
import torch

from specdec.runners.kernels import qlinear, qlinear_a8
from specdec.runners.kernels.layer import QuantLinear, packed_linear, quantize_weight

#: (in_features K, out_features N): odd K and an N that is not a multiple of 16 included.
SHAPES = [(70, 40), (129, 33), (256, 64), (1536, 96)]
#: Widths the engine feeds (1 .. gamma + 1 up to gamma 16) all lie in 1..16.
MAX_ROWS = 16


@pytest.fixture(params=qlinear.ISAS)
def isa(request) -> str:
    """Each path in turn, skipped where this CPU (or torch's capability setting) cannot run it."""
    try:
        available = qlinear.available_isas()
    except qlinear.KernelBuildError as error:
        pytest.skip(f"the extension cannot be built here: {error}")
    if request.param not in available:
        pytest.skip(
            f"{request.param} not runnable here (CPU flags / ATEN_CPU_CAPABILITY allow {', '.join(available)}); "
            "a CPU with it runs this test"
        )
    return request.param


def _weights(k: int, n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=generator) / k**0.5
    bias = torch.randn(n, generator=generator)
    return weight, bias


def _formats(weight: torch.Tensor):
    k = weight.shape[1]
    yield "int8", quantize_weight(weight, "int8")
    yield "w8a8", quantize_weight(weight, "w8a8")
    for group in (32, 128):
        if group <= k:
            yield f"int4-g{group}", quantize_weight(weight, "int4", group)
            yield f"w4a8-g{group}", quantize_weight(weight, "w4a8", group)


@pytest.mark.parametrize("k,n", SHAPES)
def test_a_rows_result_is_the_same_alone_and_in_any_group(isa, k, n):
    weight, bias = _weights(k, n)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(MAX_ROWS, k, generator=generator)
    others = torch.randn(MAX_ROWS, k, generator=generator) * 100  # different companions, other scale
    for name, packed in _formats(weight):
        for b in (None, bias):
            alone = torch.cat([packed_linear(x[i : i + 1], packed, b, isa=isa) for i in range(MAX_ROWS)])
            for m in range(1, MAX_ROWS + 1):
                grouped = packed_linear(x[:m], packed, b, isa=isa)
                assert torch.equal(grouped, alone[:m]), f"{name}, bias {b is not None}: rows differ in a group of {m}"
                # the same row at the end of a group of other rows
                mixed = torch.cat([others[: m - 1], x[m - 1 : m]])
                last = packed_linear(mixed, packed, b, isa=isa)[-1]
                assert torch.equal(last, alone[m - 1]), f"{name}: row {m - 1} changes beside {m - 1} other rows"


@pytest.mark.parametrize("fmt", ["int4", "w4a8"])
def test_rows_beyond_one_pass_and_thread_counts_change_nothing(isa, fmt):
    weight, bias = _weights(256, 200)
    packed = quantize_weight(weight, fmt, 64)
    x = torch.randn(37, 256)  # more rows than one pass over the weights takes, on every path
    alone = torch.cat([packed_linear(row[None], packed, bias, isa=isa) for row in x])
    threads = torch.get_num_threads()
    try:
        for count in sorted({1, 2, threads}):
            torch.set_num_threads(count)
            assert torch.equal(packed_linear(x, packed, bias, isa=isa), alone), f"{count} thread(s)"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("k,n", SHAPES)
def test_every_path_gives_the_scalar_paths_bits(isa, k, n):
    weight, bias = _weights(k, n, seed=2)
    x = torch.randn(MAX_ROWS, k)
    for name, packed in _formats(weight):
        expected = packed_linear(x, packed, bias, isa="scalar")
        assert torch.equal(packed_linear(x, packed, bias, isa=isa), expected), name


@pytest.mark.parametrize("k,n", SHAPES)
def test_accuracy_against_a_float64_reference_of_the_dequantized_weight(isa, k, n):
    weight, bias = _weights(k, n, seed=3)
    x = torch.randn(5, k)
    for name, packed in _formats(weight):
        if name.startswith("w"):
            # int8 activations: the reference multiplies what the kernel rounds each row to; the
            # integer sums are exact, the float steps one per group, each within an ulp or two
            qx, d = qlinear_a8.quantize_activations(x, packed.group_size)
            xs = qx.double() * d.double().repeat_interleave(packed.group_size, dim=1)[:, :k]
            steps = 4 * (-(-k // packed.group_size) + 2)
        else:
            # float32 accumulation of K products: a few ulps of the sum of |x w| at most
            xs, steps = x.double(), 4 * k
        reference = xs @ packed.dequantize().double().T + bias.double()
        got = packed_linear(x, packed, bias, isa=isa).double()
        bound = steps * torch.finfo(torch.float32).eps * (xs.abs() @ packed.dequantize().abs().double().T)
        assert ((got - reference).abs() <= bound + 1e-6).all(), f"{name}: {(got - reference).abs().max():.2e}"


def test_activation_rounding_is_within_half_a_step_per_row_and_block():
    x = torch.randn(3, 300) * torch.tensor([[1.0], [100.0], [1e-3]])
    qx, d = qlinear_a8.quantize_activations(x, 128)
    back = qx * d.repeat_interleave(128, dim=1)[:, :300]
    assert qx.abs().max() <= 127
    assert ((back - x).abs() <= d.repeat_interleave(128, dim=1)[:, :300] / 2 * (1 + 1e-6)).all()


def test_quantization_error_is_within_half_a_step():
    weight, _ = _weights(256, 48, seed=4)
    int8 = qlinear.quantize_int8(weight)
    step8 = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((int8.dequantize() - weight).abs() <= step8 / 2 + 1e-6).all()
    int4 = qlinear.quantize_int4(weight, 32)
    groups = weight.reshape(48, -1, 32)
    step4 = ((groups.amax(dim=2) - groups.amin(dim=2)) / 15).repeat_interleave(32, dim=1)
    assert ((int4.dequantize() - weight).abs() <= step4 / 2 + 1e-6).all()


def test_bfloat16_input_is_widened_exactly_and_returned_in_bfloat16(isa):
    weight, bias = _weights(129, 33, seed=5)
    packed = qlinear.quantize_int8(weight)
    x = torch.randn(3, 129).to(torch.bfloat16)
    got = packed_linear(x, packed, bias, isa=isa)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, packed_linear(x.float(), packed, bias, isa=isa).to(torch.bfloat16))


@pytest.mark.parametrize("fmt", ["int8", "int4", "w8a8", "w4a8"])
def test_quant_linear_replaces_nn_linear(fmt):
    torch.manual_seed(6)
    bits = 4 if fmt in ("int4", "w4a8") else 8
    linear = torch.nn.Linear(128, 40)
    layer = QuantLinear.from_linear(linear, group_size=32, fmt=fmt)
    x = torch.randn(2, 3, 128)
    y = layer(x)
    assert y.shape == (2, 3, 40)
    assert torch.equal(y.reshape(6, 40), packed_linear(x.reshape(6, 128), layer.packed, linear.bias))
    # quantization error: a weight moves by up to half a step (int4 ~ 1/30 of its group's range)
    torch.testing.assert_close(y, linear(x), atol=0.3 if bits == 4 else 0.05, rtol=0)
    clone = QuantLinear(layer.packed, linear.bias)
    clone.load_state_dict(layer.state_dict())
    assert torch.equal(clone(x), y)


def test_the_path_can_be_forced_lower_but_not_higher(monkeypatch):
    available = qlinear.available_isas()
    monkeypatch.setenv("SPECDEC_QLINEAR_ISA", "scalar")
    assert qlinear.default_isa() == "scalar"
    missing = [isa for isa in qlinear.ISAS if isa not in available]
    if missing:
        monkeypatch.setenv("SPECDEC_QLINEAR_ISA", missing[0])
        with pytest.raises(ValueError):
            qlinear.default_isa()
    monkeypatch.delenv("SPECDEC_QLINEAR_ISA")
    assert qlinear.default_isa() == available[-1]


def test_bad_arguments_are_refused():
    weight, _ = _weights(64, 16)
    with pytest.raises(ValueError):
        qlinear.quantize_int4(weight, 31)  # odd group
    packed = qlinear.quantize_int8(weight)
    with pytest.raises(RuntimeError):
        packed_linear(torch.randn(2, 63), packed)  # wrong K
    with pytest.raises(RuntimeError):
        packed_linear(torch.randn(2, 64, dtype=torch.float64), packed)
    with pytest.raises(ValueError):
        quantize_weight(weight, "w4a8", 12)  # not a multiple of 8
    a8 = quantize_weight(weight, "w4a8", 32)
    with pytest.raises(ValueError):
        packed_linear(torch.randn(2, 63), a8)  # wrong K


@pytest.mark.parametrize("shape", [(1, 12, 2, 5, 200, 128), (2, 8, 8, 3, 37, 8), (1, 4, 2, 17, 40, 20)])
def test_rowwise_attention_is_batch_invariant_on_every_path_and_accurate(shape):
    """kernels/attention.cpp: query row i of a multi-row call is the one-row call with the keys up
    to its position, to the bit (GQA, a head size that is not a multiple of 8, an additive mask),
    the AVX2 and scalar paths agree to the bit, and both are within float32 rounding of SDPA."""
    try:
        ext, avx2 = qlinear.extension(), "avx2" in qlinear.available_isas()
    except qlinear.KernelBuildError as error:
        pytest.skip(f"the extension cannot be built here: {error}")
    b, h, h_kv, q_len, length, d = shape
    generator = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, heads, n, d, generator=generator) for heads, n in ((h, q_len), (h_kv, length), (h_kv, length)))
    mask = torch.zeros(b, 1, q_len, length)
    mask[0, 0, :, :3] = float("-inf")  # e.g. left padding
    scaling = d**-0.5
    for m in (None, mask):
        results = []
        for path in [False, True] if avx2 else [False]:
            together = ext.rowwise_attention(q, k, v, m, scaling, path)
            alone = []
            for i in range(q_len):
                seen = length - (q_len - 1 - i)
                row_mask = None if m is None else m[:, :, i : i + 1, :seen].contiguous()
                alone.append(ext.rowwise_attention(q[:, :, i : i + 1], k[:, :, :seen], v[:, :, :seen], row_mask, scaling, path))
            assert torch.equal(together, torch.cat(alone, dim=1)), f"avx2={path}, mask={m is not None}"
            results.append(together)
        assert all(torch.equal(results[0], r) for r in results), "the AVX2 and scalar paths differ"
        causal = torch.ones(q_len, length, dtype=torch.bool).tril(length - q_len)
        additive = torch.zeros(b, 1, q_len, length).masked_fill(~causal, float("-inf")) + (0 if m is None else m)
        repeat = h // h_kv
        reference = torch.nn.functional.scaled_dot_product_attention(
            q.double(), k.repeat_interleave(repeat, 1).double(), v.repeat_interleave(repeat, 1).double(),
            attn_mask=additive.double()).transpose(1, 2)
        torch.testing.assert_close(results[0].double(), reference, rtol=0, atol=2e-6)
