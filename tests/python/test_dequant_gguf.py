"""tests/python/dequant_gguf.py, the tool that puts a quantized (trained) model in front of
the CUDA backend as BF16 / F16, with the F32 truth beside them (tests/gpu/run, step 2b):
metadata and tensor directory kept, every value the reference dequantization's (rounded to
nearest even for BF16, as numpy does for F16), the result loads and generates in sluice-run,
and a file that is not a model gives a reason and exit 1, leaving nothing behind."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run
from test_mkmodel import gguf_dump

gguf = pytest.importorskip("gguf")
TOOL = Path(__file__).with_name("dequant_gguf.py")
FILE_TYPE = {"F32": "0", "F16": "1", "BF16": "32"}


def convert(src, dst, ty):
    return subprocess.run([sys.executable, TOOL, src, dst, "--type", ty], capture_output=True, text=True,
                          timeout=300)


def bf16_rne(x):
    """float32 -> BF16 bits, round to nearest even, written out here (not gguf-py's)."""
    b = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


@pytest.fixture(scope="module")
def quant_model(tmp_path_factory):
    genmodel = pytest.importorskip("genmodel")
    if not (genmodel.VOCAB_DIR / "ggml-vocab-llama-spm.gguf").exists():
        pytest.skip(f"reference vocabularies not found in {genmodel.VOCAB_DIR}")
    p = tmp_path_factory.mktemp("dq") / "llama2-q4k.gguf"
    genmodel.write_model(p, "llama2", "Q4_K")
    return p


@pytest.mark.parametrize("ty", ["F32", "BF16", "F16"])
def test_expands_every_matrix(quant_model, tool, tmp_path, ty):
    out = tmp_path / f"m-{ty}.gguf"
    r = convert(quant_model, out, ty)
    assert r.returncode == 0, r.stderr
    assert not Path(str(out) + ".part").exists()
    kv0, t0, _ = gguf_dump(tool, quant_model)
    kv1, t1, _ = gguf_dump(tool, out)
    assert kv1.pop("general.file_type") == FILE_TYPE[ty]
    kv0.pop("general.file_type", None)
    assert kv1 == kv0  # architecture, hyperparameters, tokenizer: as they were
    assert {n: s for n, (_, s, _) in t1.items()} == {n: s for n, (_, s, _) in t0.items()}
    src = {t.name: t for t in gguf.GGUFReader(quant_model).tensors}
    n_quant = 0
    for t in gguf.GGUFReader(out).tensors:
        s = src[t.name]
        want = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float32).reshape(-1)
        is_matrix = len(t.shape) >= 2 and int(np.prod(t.shape[1:])) > 1
        assert t.tensor_type.name == (ty if is_matrix else "F32"), t.name
        n_quant += s.tensor_type.name == "Q4_K"
        got = np.asarray(t.data).reshape(-1)
        if t.tensor_type.name == "F32":
            assert np.array_equal(got.view(np.float32), want), t.name
        elif ty == "F16":
            assert np.array_equal(got.view(np.float16), want.astype(np.float16)), t.name
        else:
            assert np.array_equal(got.view(np.uint16), bf16_rne(want)), t.name
    assert n_quant > 0, "the source had no Q4_K matrix: the test proved nothing"
    r = run([tool("sluice-run"), "-m", out, "-p", "Once upon a time", "-n", 8, "--temp", 0])
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_not_a_model(quant_model, tmp_path):
    vocab = pytest.importorskip("genmodel").VOCAB_DIR / "ggml-vocab-llama-spm.gguf"
    r = convert(vocab, tmp_path / "v.gguf", "BF16")
    assert r.returncode == 1 and "no tensors" in r.stderr, r.stderr
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(quant_model.read_bytes()[: quant_model.stat().st_size // 2])
    r = convert(cut, tmp_path / "c.gguf", "F16")
    assert r.returncode == 1 and r.stderr.startswith("dequant_gguf: ") and "Traceback" not in r.stderr, r.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\xff" * 60)
    r = convert(junk, tmp_path / "j.gguf", "F32")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.gguf", "junk.gguf"]
