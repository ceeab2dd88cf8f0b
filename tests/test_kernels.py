"""The quantized linear kernels (qlinear.py): batch invariance on every instruction-set path this
CPU runs (AVX-512, AVX2 + FMA and scalar are each forced in turn; a path the CPU lacks is skipped
with the reason), agreement of the paths, and accuracy against a float64 reference.

The first test in a fresh cache builds the extension (about a minute); where it cannot be built
(no compiler / ninja) every test here skips with the reason.
"""

from __future__ import annotations

import pytest
import torch

from specdec.runners.kernels import qlinear

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
    yield "int8", qlinear.quantize_int8(weight)
    for group in (32, 128):
        if group <= k:
            yield f"int4-g{group}", qlinear.quantize_int4(weight, group)


@pytest.mark.parametrize("k,n", SHAPES)
def test_a_rows_result_is_the_same_alone_and_in_any_group(isa, k, n):
    weight, bias = _weights(k, n)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(MAX_ROWS, k, generator=generator)
    others = torch.randn(MAX_ROWS, k, generator=generator) * 100  # different companions, other scale
    for name, packed in _formats(weight):
        for b in (None, bias):
            alone = torch.cat([qlinear.quantized_linear(x[i : i + 1], packed, b, isa=isa) for i in range(MAX_ROWS)])
            for m in range(1, MAX_ROWS + 1):
                grouped = qlinear.quantized_linear(x[:m], packed, b, isa=isa)
                assert torch.equal(grouped, alone[:m]), f"{name}, bias {b is not None}: rows differ in a group of {m}"
                # the same row at the end of a group of other rows
                mixed = torch.cat([others[: m - 1], x[m - 1 : m]])
                last = qlinear.quantized_linear(mixed, packed, b, isa=isa)[-1]
                assert torch.equal(last, alone[m - 1]), f"{name}: row {m - 1} changes beside {m - 1} other rows"


def test_rows_beyond_one_pass_and_thread_counts_change_nothing(isa):
    weight, bias = _weights(256, 200)
    packed = qlinear.quantize_int4(weight, 64)
    x = torch.randn(37, 256)  # more rows than one pass over the weights takes, on every path
    alone = torch.cat([qlinear.quantized_linear(row[None], packed, bias, isa=isa) for row in x])
    threads = torch.get_num_threads()
    try:
        for count in sorted({1, 2, threads}):
            torch.set_num_threads(count)
            assert torch.equal(qlinear.quantized_linear(x, packed, bias, isa=isa), alone), f"{count} thread(s)"
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("k,n", SHAPES)
def test_every_path_gives_the_scalar_paths_bits(isa, k, n):
    weight, bias = _weights(k, n, seed=2)
    x = torch.randn(MAX_ROWS, k)
    for name, packed in _formats(weight):
        expected = qlinear.quantized_linear(x, packed, bias, isa="scalar")
        assert torch.equal(qlinear.quantized_linear(x, packed, bias, isa=isa), expected), name


@pytest.mark.parametrize("k,n", SHAPES)
def test_accuracy_against_a_float64_reference_of_the_dequantized_weight(isa, k, n):
    weight, bias = _weights(k, n, seed=3)
    x = torch.randn(5, k)
    for name, packed in _formats(weight):
        reference = x.double() @ packed.dequantize().double().T + bias.double()
        got = qlinear.quantized_linear(x, packed, bias, isa=isa).double()
        # float32 accumulation of K products: a few ulps of the sum of |x w| at most
        bound = 4 * k * torch.finfo(torch.float32).eps * (x.abs().double() @ packed.dequantize().abs().double().T)
        assert ((got - reference).abs() <= bound + 1e-6).all(), f"{name}: {(got - reference).abs().max():.2e}"


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
    got = qlinear.quantized_linear(x, packed, bias, isa=isa)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, qlinear.quantized_linear(x.float(), packed, bias, isa=isa).to(torch.bfloat16))


@pytest.mark.parametrize("bits", [8, 4])
def test_quant_linear_replaces_nn_linear(bits):
    torch.manual_seed(6)
    linear = torch.nn.Linear(128, 40)
    layer = qlinear.QuantLinear.from_linear(linear, bits=bits, group_size=32)
    x = torch.randn(2, 3, 128)
    y = layer(x)
    assert y.shape == (2, 3, 40)
    assert torch.equal(y.reshape(6, 40), qlinear.quantized_linear(x.reshape(6, 128), layer.packed, linear.bias))
    # quantization error: a weight moves by up to half a step (int4 ~ 1/30 of its group's range)
    torch.testing.assert_close(y, linear(x), atol=0.3 if bits == 4 else 0.03, rtol=0)
    clone = qlinear.QuantLinear(layer.packed, linear.bias)
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
        qlinear.quantized_linear(torch.randn(2, 63), packed)  # wrong K
    with pytest.raises(RuntimeError):
        qlinear.quantized_linear(torch.randn(2, 64, dtype=torch.float64), packed)
