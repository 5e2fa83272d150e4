"""sluice's forward pass against llama.cpp on random-weight models (genmodel.py): every
architecture variant x every tensor type, teacher-forced logits over random token ids and
greedy continuations.

What "agree" can mean here was measured, not assumed. sluice converts activations for each
matmul exactly as llama.cpp does (F16/BF16 for those weights, Q8_0/Q8_1/Q8_K for the
quantized ones), and at position 0 its logits are bit-identical to llama.cpp's. From
position 1 on, attention differs by float rounding (llama.cpp's non-flash path rounds Q
and the softmax row to F16 for its F16 K/V matmuls; sluice rounds elsewhere), ~3e-4 relative. For float
weights that is all. For quantized weights the next matmul requantizes the activations to
Q8, and a perturbation of 1e-4 flips the rounding of a few elements by a whole quant step,
so the noise grows to a few 1e-2 of the largest logit. llama.cpp against itself (flash vs
non-flash attention, same model) shows the same: 1.5e-3 relative for F32, 7e-3 for BF16,
2-5e-2 for Q8_0/Q4_K, with top-1 agreement of only 92-98% on these random models, whose
best and second-best logits are often a hair apart.

That was before sluice's kernels and attention were made to round exactly as ggml's x86
single-token path does (tests/python/test_kernels_ggml.py). Where this machine's llama.cpp
runs those kernels (x86 with AVX-512, as on the CI machines), every logit must now be
bit-identical and every greedy continuation identical: anything else is a bug. Elsewhere
(another CPU, another llama.cpp build) the noise above returns, and the checks are:
  * max|sluice - llama.cpp| / max|llama.cpp| under TOLERANCE[type] (below, with reasons);
    a real error (wrong rope, window, norm, bias, kernel) shows up at 1e-1 or more;
  * top-1 agreement >= 99% at the positions where llama.cpp's best logit leads the second
    by more than half the tolerance (a difference below the tolerance cannot flip a wider
    lead, so this is where a wrong engine would show); near-ties are no verdict;
  * greedy continuations identical for 16 tokens, or parting only at a near tie (the two
    choices within the tolerance in llama.cpp's own logits).
"""
import numpy as np
import pytest

import genmodel
from conftest import llama_reference, run
from test_kernels_ggml import ggml_mirrored

SEQ_LEN = 48
N_SEQS = 2
N_GREEDY = 16
N_GREEDY_PROMPTS = 2

# max|diff| / max|logit|, per weight type
TOLERANCE = {
    # attention rounding only (llama.cpp flash vs non-flash: 1.5e-3)
    "F32": 3e-3, "F16": 3e-3,
    # BF16 activations keep 8 mantissa bits: rounding flips cost more (llama.cpp vs itself: 7e-3)
    "BF16": 1.5e-2,
    # Q8 activation rounding flips amplify the attention noise (llama.cpp vs itself: 1.4e-2..5e-2)
    "Q4_0": 8e-2, "Q4_1": 8e-2, "Q5_0": 8e-2, "Q5_1": 8e-2, "Q8_0": 8e-2,
    "Q4_K": 1e-1, "Q5_K": 1e-1, "Q6_K": 1e-1,
}
MIN_TOP1 = 0.99
MIN_DECIDED = 0.05  # the top-1 check must rest on at least this share of positions

CASES = [(v, t) for v in genmodel.VARIANTS for t in genmodel.TYPES]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("oracle")


def _sequences(n_vocab, seed):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_vocab, SEQ_LEN).tolist() for _ in range(N_SEQS)]


def _feed(llm, ids):
    """One token per llama_decode: llama.cpp's single-token kernels throughout (with two or
    more tokens it switches to tinyBLAS and tiled matmuls, whose float order differs)."""
    llm.reset()
    for tok in ids:
        llm.eval([tok])


def _llama_logits(llm, ids):
    _feed(llm, ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def _llama_greedy(llm, prompt, n):
    """llama.cpp's argmax continuation and the logit row each choice came from."""
    _feed(llm, prompt)
    out, rows = [], []
    for _ in range(n):
        row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        tok = int(np.argmax(row))
        out.append(tok)
        rows.append(row)
        llm.eval([tok])
    return out, rows


_results = {}


@pytest.fixture(scope="module")
def exact(tool, llama_cpp):
    return ggml_mirrored(tool, llama_cpp)


def compare(probe, workdir, llama_cpp, variant, wtype):
    """Runs one model through both engines once; the two tests below read the result."""
    key = (variant, wtype)
    if key in _results:
        return _results[key]
    path = workdir / f"{variant}-{wtype}.gguf"
    cfg = genmodel.write_model(path, variant, wtype, seed=1)
    n_vocab = cfg["n_vocab"]
    seqs = _sequences(n_vocab, seed=CASES.index(key))
    try:
        text = "".join(" ".join(map(str, s)) + "\n" for s in seqs)
        out = workdir / "logits.bin"
        r = run([probe, "logits", "-m", path, "-t", "2", "-o", out], input=text)
        assert r.returncode == 0, f"sluice-probe logits failed: {r.stderr.strip()}"
        ours = np.fromfile(out, dtype="<f4").reshape(N_SEQS, SEQ_LEN, n_vocab)
        prompts = [s[:8] for s in seqs[:N_GREEDY_PROMPTS]]
        r = run([probe, "greedy", "-m", path, "-t", "2", "-n", str(N_GREEDY)],
                input="".join(" ".join(map(str, p)) + "\n" for p in prompts))
        assert r.returncode == 0, f"sluice-probe greedy failed: {r.stderr.strip()}"
        our_greedy = [list(map(int, line.split())) for line in r.stdout.strip().splitlines()]

        llm = llama_reference(llama_cpp, path, n_ctx=128, logits_all=True, n_threads=2, n_batch=512)
        try:
            ref = np.stack([_llama_logits(llm, s) for s in seqs])
            ref_greedy = [_llama_greedy(llm, p, N_GREEDY) for p in prompts]
        finally:
            llm.close()
    finally:
        path.unlink(missing_ok=True)
    assert np.isfinite(ours).all(), "sluice produced non-finite logits"
    scale = float(np.abs(ref).max())
    diff = np.abs(ours - ref)
    top2 = np.sort(ref, axis=-1)[..., -2:]
    decided = (top2[..., 1] - top2[..., 0]) > 0.5 * TOLERANCE[wtype] * scale
    agree = ours.argmax(-1) == ref.argmax(-1)
    res = dict(max_abs=float(diff.max()), rel=float(diff.max() / scale), rel_mean=float(diff.mean() / np.abs(ref).mean()),
               top1=float(agree.mean()), decided=float(decided.mean()),
               top1_decided=float(agree[decided].mean()) if decided.any() else 0.0,
               scale=scale, ours_greedy=our_greedy, ref_greedy=ref_greedy)
    _results[key] = res
    return res


@pytest.mark.parametrize("variant,wtype", CASES, ids=[f"{v}-{t}" for v, t in CASES])
def test_logits_match_llama_cpp(tool, workdir, llama_cpp, vocab_dir, demo_model, exact, variant, wtype):
    res = compare(tool("sluice-probe"), workdir, llama_cpp, variant, wtype)
    if exact:
        print(f"{variant} {wtype}: max |diff| {res['max_abs']:.3g} (bit-identical expected)")
        assert res["max_abs"] == 0.0, \
            f"logits differ from llama.cpp's by up to {res['max_abs']:.3g} where they must be identical"
        return
    tol = TOLERANCE[wtype]
    print(f"{variant} {wtype}: max rel diff {res['rel']:.2e}, mean rel diff {res['rel_mean']:.2e}, "
          f"top-1 {res['top1']:.4f} (all), {res['top1_decided']:.4f} "
          f"(the {res['decided']:.0%} of positions llama.cpp decides by > tolerance/2)")
    assert res["rel"] < tol, \
        f"logits differ from llama.cpp by {res['rel']:.2e} of the largest (tolerance {tol:.0e})"
    assert res["decided"] >= MIN_DECIDED, f"only {res['decided']:.0%} of positions clearly decided"
    assert res["top1_decided"] >= MIN_TOP1, \
        f"top-1 agreement {res['top1_decided']:.4f} < {MIN_TOP1} where llama.cpp's choice is clear"


@pytest.mark.parametrize("variant,wtype", CASES, ids=[f"{v}-{t}" for v, t in CASES])
def test_greedy_matches_llama_cpp(tool, workdir, llama_cpp, vocab_dir, demo_model, exact, variant, wtype):
    res = compare(tool("sluice-probe"), workdir, llama_cpp, variant, wtype)
    assert len(res["ours_greedy"]) == N_GREEDY_PROMPTS
    if exact:
        for ours, (ref, _) in zip(res["ours_greedy"], res["ref_greedy"]):
            assert ours == ref, f"greedy continuation differs:\n sluice    {ours}\n llama.cpp {ref}"
        return
    margin = TOLERANCE[wtype] * res["scale"]
    for ours, (ref, rows) in zip(res["ours_greedy"], res["ref_greedy"]):
        assert len(ours) == N_GREEDY
        k = next((i for i in range(N_GREEDY) if ours[i] != ref[i]), None)
        if k is None:
            continue
        # the sequences part at step k; fine only if llama.cpp itself nearly tied there
        gap = float(rows[k][ref[k]] - rows[k][ours[k]])
        print(f"{variant} {wtype}: greedy parts at step {k} on a gap of {gap:.2e} (margin {margin:.2e})")
        assert gap <= margin, (f"greedy continuation differs at step {k} where llama.cpp prefers "
                               f"{ref[k]} over {ours[k]} by {gap:.3g}:\n sluice    {ours}\n llama.cpp {ref}")


def test_batch_invariance(tool, workdir, vocab_dir, demo_model):
    """Sequences interleaved in shared batches give bit-identical logits to each run alone."""
    path = workdir / "batch-qwen2-Q4_K.gguf"
    cfg = genmodel.write_model(path, "qwen2", "Q4_K", seed=2)
    try:
        rng = np.random.default_rng(5)
        seqs = [rng.integers(0, cfg["n_vocab"], n).tolist() for n in (5, 17, 30, 1)]
        r = run([tool("sluice-probe"), "batch", "-m", path, "-t", "2"],
                input="".join(" ".join(map(str, s)) + "\n" for s in seqs))
        print(r.stdout.strip())
        assert r.returncode == 0, f"batch invariance: {r.stderr.strip()}"
    finally:
        path.unlink(missing_ok=True)
