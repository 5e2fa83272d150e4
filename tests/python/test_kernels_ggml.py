"""Every dot-product kernel and activation quantizer against ggml's own, bit for bit.

llama.cpp's Python package ships ggml's CPU backend as a shared library, built for this
machine (-march=native). Its exported kernels (quantize_row_q8_0, ggml_vec_dot_q6_K_q8_K,
...) are called here through ctypes on random valid blocks and random activations, and
sluice's quant_vec_dot (through tests/quant/quant-tool) must return the same float, not a
nearby one: the engine's oracle tests rely on this to tell a real bug from rounding noise.
ggml's x86 kernels differ from its portable reference in float summation order, so what is
matched is what llama.cpp runs on x86 with AVX2; elsewhere the test skips."""
import ctypes
import pathlib
import platform

import numpy as np
import pytest

from test_quant import WEIGHTS, random_blocks, tool_run

ACT_BYTES = {"q8_0": (32, 34), "q8_1": (32, 36), "q8_K": (256, 292), "f16": (1, 2), "bf16": (1, 2),
             "f32": (1, 4)}
GGML_QUANTIZER = {"q8_0": "quantize_row_q8_0", "q8_1": "quantize_row_q8_1", "q8_K": "quantize_row_q8_K",
                  "f16": "ggml_cpu_fp32_to_fp16", "bf16": "ggml_cpu_fp32_to_bf16", "f32": None}
GGML_DOT = {"f32": "ggml_vec_dot_f32", "f16": "ggml_vec_dot_f16", "bf16": "ggml_vec_dot_bf16"}


def load_ggml_cpu(llama_cpp):
    """ggml's CPU backend from the llama-cpp-python package, initialised."""
    lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
    ctypes.CDLL(str(lib / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(lib / "libggml-cpu.so"))
    cpu.ggml_cpu_init()  # ggml's fp16 tables are filled here
    return cpu


def kernel_mismatches(tool, cpu, name, trials=40):
    """(trial, ours, ggml's) for each random dot of type name that differs."""
    _, blck, size, act = WEIGHTS[name]
    rng = np.random.default_rng(17)
    n = 1024 if blck > 1 else 640  # 640: the float dots' leftover path too
    mismatches = []
    for trial in range(trials):
        x = (rng.standard_normal(n) * rng.uniform(1e-2, 1e2)).astype(np.float32)
        xq = ggml_quantize(cpu, act, x)
        assert tool_run(tool, ["quant", act], x.tobytes()) == xq, f"{act} activations differ from ggml's"
        w = random_blocks(rng, name, n // blck)
        theirs = np.float32(ggml_dot(cpu, name, n, w, xq))
        ours = np.float32(float(tool_run(tool, ["dot", name, str(n)], w + xq).decode()))
        if ours != theirs:
            mismatches.append((trial, float(ours), float(theirs)))
    return mismatches


def ggml_mirrored(tool, llama_cpp):
    """True when this machine's llama.cpp runs exactly the kernels sluice mirrors (ggml's x86
    kernels as built for this CPU): then anything but bit-identical logits is a bug."""
    if platform.machine() != "x86_64":
        return False
    try:
        cpu = load_ggml_cpu(llama_cpp)
    except OSError:
        return False
    return all(not kernel_mismatches(tool, cpu, name, trials=4) for name in WEIGHTS)


@pytest.fixture(scope="module")
def ggml_cpu(llama_cpp):
    if platform.machine() != "x86_64":
        pytest.skip("the bit-exact match is with ggml's x86 kernels")
    return load_ggml_cpu(llama_cpp)


def ggml_quantize(cpu, act, x):
    blck, size = ACT_BYTES[act]
    if act == "f32":
        return x.tobytes()
    out = ctypes.create_string_buffer(len(x) // blck * size)
    getattr(cpu, GGML_QUANTIZER[act])(x.ctypes.data_as(ctypes.c_void_p), out, ctypes.c_int64(len(x)))
    return out.raw


def ggml_dot(cpu, name, n, w, xq):
    fn = getattr(cpu, GGML_DOT.get(name, f"ggml_vec_dot_{name}_{WEIGHTS[name][3]}"))
    fn.restype = None
    s = ctypes.c_float()
    fn(ctypes.c_int(n), ctypes.byref(s), ctypes.c_size_t(0), w, ctypes.c_size_t(0), xq,
       ctypes.c_size_t(0), ctypes.c_int(1))
    return s.value


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_dot_bit_identical_to_ggml(tool, ggml_cpu, name):
    mismatches = kernel_mismatches(tool, ggml_cpu, name)
    assert not mismatches, f"{len(mismatches)}/40 dots differ from ggml's, e.g. {mismatches[:3]}"
