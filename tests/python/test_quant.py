"""The tensor-type kernels against an implementation we did not write: gguf-py's numpy
(de)quantizers (gguf.quants), driven through tests/quant/quant-tool.

- dequantize: random valid blocks of every weight type, bit-identical floats;
- quantize: F16, BF16 activations bit-identical to gguf.quants; Q8_0 bit-identical to a
  numpy model of ggml's x86 activation quantizer (q8_0_x86 below);
- dot: quant_vec_dot of a random weight row and a quantized activation row against numpy's
  float64 dot of the two dequantized rows, within 1e-5 of sum|w_i x_i| (float32 summation
  order), plus, for Q4_1/Q5_1, the fp16 rounding of the activation block sums ggml uses
  for the min term (|m * s| * 2^-10 per block)."""
import subprocess

import numpy as np
import pytest

gq = pytest.importorskip("gguf.quants")
from gguf import GGMLQuantizationType as T  # noqa: E402

QK_K = 256
# name -> (gguf type, block elements, block bytes, vec_dot type name)
WEIGHTS = {
    "f32": (T.F32, 1, 4, "f32"),
    "f16": (T.F16, 1, 2, "f16"),
    "bf16": (T.BF16, 1, 2, "bf16"),
    "q4_0": (T.Q4_0, 32, 18, "q8_0"),
    "q4_1": (T.Q4_1, 32, 20, "q8_1"),
    "q5_0": (T.Q5_0, 32, 22, "q8_0"),
    "q5_1": (T.Q5_1, 32, 24, "q8_1"),
    "q8_0": (T.Q8_0, 32, 34, "q8_0"),
    "q4_K": (T.Q4_K, QK_K, 144, "q8_K"),
    "q5_K": (T.Q5_K, QK_K, 176, "q8_K"),
    "q6_K": (T.Q6_K, QK_K, 210, "q8_K"),
}
# byte offsets of the fp16 fields that must hold finite values in a "valid" block
HALF_FIELDS = {"q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0],
               "q4_K": [0, 2], "q5_K": [0, 2], "q6_K": [208]}


def random_blocks(rng, name, nblocks):
    _, blck, size, _ = WEIGHTS[name]
    if blck == 1:
        vals = rng.standard_normal(nblocks).astype(np.float32)
        if name == "f32":
            return vals.tobytes()
        if name == "f16":
            return vals.astype(np.float16).tobytes()
        return (vals.view(np.uint32) >> 16).astype(np.uint16).tobytes()
    raw = rng.integers(0, 256, size=(nblocks, size), dtype=np.uint8)
    for off in HALF_FIELDS[name]:
        h = (rng.standard_normal(nblocks) * 0.05).astype(np.float16)
        raw[:, off:off + 2] = h.view(np.uint8).reshape(nblocks, 2)
    if name == "q8_0":  # ggml's int8 kernels assume no -128 (its quantizer never makes one)
        qs = raw[:, 2:].view(np.int8)
        qs[qs == -128] = -127
    return raw.tobytes()


def tool_run(tool, args, data):
    # raw bytes both ways, so not conftest.run (which decodes text)
    r = subprocess.run([str(tool("quant-tool")), *args], input=data, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_dequantize_matches_gguf(tool, name):
    rng = np.random.default_rng(1234)
    qtype, blck, size, _ = WEIGHTS[name]
    nblocks = 64 if blck > 1 else 4096
    data = random_blocks(rng, name, nblocks)
    ours = np.frombuffer(tool_run(tool, ["dequant", name], data), dtype=np.float32)
    theirs = gq.dequantize(np.frombuffer(data, dtype=np.uint8), qtype).astype(np.float32).reshape(-1)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), \
        f"{name}: {np.count_nonzero(ours != theirs)} values differ, max |d| {np.max(np.abs(ours - theirs))}"


@pytest.mark.parametrize("isa", ["ref", "simd"])
@pytest.mark.parametrize("name,qtype", [("q8_0", T.Q8_0), ("f16", T.F16), ("bf16", T.BF16)])
def test_quantize_matches_gguf(tool, name, qtype, isa, monkeypatch):
    if isa == "ref":
        monkeypatch.setenv("SLUICE_QUANT_ISA", "ref")
    else:
        monkeypatch.delenv("SLUICE_QUANT_ISA", raising=False)
    rng = np.random.default_rng(99)
    x = (rng.standard_normal(64 * 256) * np.repeat(rng.uniform(1e-3, 10, 64), 256)).astype(np.float32)
    x[:32] = 0.0                                   # an all-zero block
    x[32:64] = np.arange(32, dtype=np.float32) - 15.5  # halves
    x[64:96] = np.concatenate([[127.0], np.arange(31) - 15.5]).astype(np.float32)  # d = 1: exact halves
    ours = tool_run(tool, ["quant", name], x.tobytes())
    theirs = q8_0_x86(x) if name == "q8_0" else gq.quantize(x.reshape(64, 256), qtype).tobytes()
    assert ours == theirs


def q8_0_x86(x):
    """ggml's Q8_0 activation quantizer as it runs on x86 (its AVX2 path, which llama.cpp
    uses there): id = 127 / amax and round half to even. gguf.quants follows ggml's portable
    reference instead (id = 1 / d, half away from zero), which differs by an ulp at times."""
    b = x.reshape(-1, 32).astype(np.float32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint((b * inv).astype(np.float32)).astype(np.int8)
    out = np.zeros(len(b), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    out["d"] = d[:, 0].astype(np.float16)
    out["qs"] = q
    return out.tobytes()


def dequant_act(name, data):
    """Independent numpy decode of the activation formats."""
    b = np.frombuffer(data, dtype=np.uint8)
    if name in ("f32", "f16", "bf16"):
        return gq.dequantize(b, WEIGHTS[name][0]).astype(np.float64).reshape(-1), None
    if name == "q8_0":
        return gq.dequantize(b, T.Q8_0).astype(np.float64).reshape(-1), None
    if name == "q8_1":
        blk = b.reshape(-1, 36)
        d = blk[:, 0:2].copy().view(np.float16).astype(np.float64)
        s = blk[:, 2:4].copy().view(np.float16).astype(np.float64).reshape(-1)
        return (d * blk[:, 4:].view(np.int8)).reshape(-1), s
    blk = b.reshape(-1, 292)
    d = blk[:, 0:4].copy().view(np.float32).astype(np.float64)
    return (d * blk[:, 4:260].view(np.int8)).reshape(-1), None


@pytest.mark.parametrize("isa", ["ref", "simd"])
@pytest.mark.parametrize("name", list(WEIGHTS))
def test_dot_matches_numpy(tool, name, isa, monkeypatch):
    if isa == "ref":
        monkeypatch.setenv("SLUICE_QUANT_ISA", "ref")
    else:
        monkeypatch.delenv("SLUICE_QUANT_ISA", raising=False)
    qtype, blck, size, xname = WEIGHTS[name]
    rng = np.random.default_rng(7)
    for n in (256, 1024, 4096):
        w = random_blocks(rng, name, n // blck)
        x = rng.standard_normal(n).astype(np.float32)
        xq = tool_run(tool, ["quant", xname], x.tobytes())
        got = float(tool_run(tool, ["dot", name, str(n)], w + xq).decode())
        wd = gq.dequantize(np.frombuffer(w, dtype=np.uint8), qtype).astype(np.float64).reshape(-1)
        xd, s = dequant_act(xname, xq)
        want = float(np.dot(wd, xd))
        tol = 1e-5 * float(np.sum(np.abs(wd * xd))) + 1e-30
        if s is not None:  # min term: ggml uses s = fp16(d * sum(qs)) instead of the exact sum
            m = np.frombuffer(w, dtype=np.uint8).reshape(-1, size)[:, 2:4].copy().view(np.float16)
            tol += float(np.sum(np.abs(m.astype(np.float64).reshape(-1) * s))) * 2.0 ** -10
        assert abs(got - want) <= tol, f"{name} n={n}: got {got} want {want} tol {tol}"
