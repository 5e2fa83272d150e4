"""sluice-run end to end: prompt in, text out. Greedy text equals llama.cpp's on the demo
model, seeded sampling repeats, and bad input gets its documented exit code and a one-line
reason (usage errors: exit 2, a line naming the problem and a hint to --help; model and
run errors: exit 1, one line `sluice-run: MODEL: reason`)."""
import os

import numpy as np
import pytest

from conftest import llama_reference, run

GREEDY_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    "]
N = 24


def _llama_greedy_text(llama_cpp, model, prompt, n):
    llm = llama_reference(llama_cpp, model, n_ctx=64, logits_all=True, n_threads=2)
    try:
        ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        for tok in ids:  # llama.cpp's single-token path, as in test_demo_model.py
            llm.eval([tok])
        out = []
        for _ in range(n):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            if llm.token_eos() == tok or tok in (106,):  # EOS, <end_of_turn> (gemma EOG)
                break
            out.append(tok)
            llm.eval([tok])
        return llm.detokenize(out, prev_tokens=ids).decode("utf-8", errors="replace")
    finally:
        llm.close()


@pytest.mark.parametrize("prompt", GREEDY_PROMPTS)
def test_greedy_text_matches_llama_cpp(tool, demo_model, llama_cpp, prompt):
    expected = _llama_greedy_text(llama_cpp, demo_model, prompt, N)
    r = run([tool("sluice-run"), "-m", demo_model, "-p", prompt, "-n", N, "--temp", "0", "-t", "2"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt), "the prompt is echoed first"
    got = r.stdout[len(prompt):]
    assert got.endswith("\n")
    assert got[:-1] == expected, f"sluice-run {got[:-1]!r}\nllama.cpp  {expected!r}"
    # the closing statistics
    for what in ("load:", "GB/s", "prompt:", "generation:", "tokens/s"):
        assert what in r.stderr, f"{what!r} missing from the summary:\n{r.stderr}"


def test_seeded_sampling_repeats(tool, demo_model):
    base = [tool("sluice-run"), "-m", demo_model, "-p", "Tell me a story about a dragon.", "-n", 20,
            "--temp", "1.0", "-t", "2", "--no-display-prompt"]
    a = run(base + ["--seed", 1234])
    b = run(base + ["--seed", 1234])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout, "same seed, different text"
    others = [run(base + ["--seed", s]).stdout for s in (1, 2, 3)]
    assert any(o != a.stdout for o in others), "four seeds gave the same 20 sampled tokens"


def test_prompt_from_file_with_escapes(tool, demo_model, tmp_path):
    f = tmp_path / "prompt.txt"
    f.write_text("The capital of France is")
    a = run([tool("sluice-run"), "-m", demo_model, "-f", f, "-n", 8, "--temp", "0", "-t", "2"])
    b = run([tool("sluice-run"), "-m", demo_model, "-p", "The capital\\x20of France is", "-e",
             "-n", 8, "--temp", "0", "-t", "2"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout


@pytest.mark.parametrize("args,needle", [
    (["--bogus"], "unknown option"),
    (["-p", "x"], "no model"),
    (["-m", "m.gguf"], "no prompt"),
    (["-m", "m.gguf", "-p", "x", "--temp", "abc"], "--temp"),
    (["-m", "m.gguf", "-p", "x", "--temp", "-1"], "temperature"),
    (["-m", "m.gguf", "-p", "x", "--top-p", "0"], "top_p"),
    (["-m", "m.gguf", "-p", "x", "--top-p", "1.5"], "top_p"),
    (["-m", "m.gguf", "-p", "x", "--min-p", "2"], "min_p"),
    (["-m", "m.gguf", "-p", "x", "--top-k", "-3"], "--top-k"),
    (["-m", "m.gguf", "-p", "x", "-n", "lots"], "-n"),
    (["-m", "m.gguf", "-p", "x", "-t", "0"], "-t"),
    (["-m", "m.gguf", "-p", "x", "--seed", "-5"], "--seed"),
    (["-m", "m.gguf", "-p", "x", "--ctx"], "needs a value"),
    (["-m", "m.gguf", "-p", "x", "extra"], "unexpected argument"),
])
def test_usage_errors_exit_2(tool, args, needle):
    r = run([tool("sluice-run")] + args)
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    first = r.stderr.splitlines()[0]
    assert first.startswith("sluice-run: ") and needle in first, first
    assert r.stdout == ""


def test_help_and_version(tool):
    r = run([tool("sluice-run"), "--help"])
    assert r.returncode == 0 and "--temp" in r.stdout and "--repeat-penalty" in r.stdout
    r = run([tool("sluice-run"), "--version"])
    assert r.returncode == 0 and r.stdout.startswith("sluice-run ")


def _one_line_model_error(r, path):
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"sluice-run: {path}: "), lines[0]


def test_missing_model(tool, tmp_path):
    path = tmp_path / "nope.gguf"
    _one_line_model_error(run([tool("sluice-run"), "-m", path, "-p", "hi"]), path)


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "directory"])
def test_hostile_model_file(tool, tmp_path, demo_model, kind):
    path = tmp_path / f"{kind}.gguf"
    if kind == "random":
        path.write_bytes(os.urandom(1 << 16))
    elif kind == "truncated":
        with open(demo_model, "rb") as f:
            path.write_bytes(f.read(1 << 20))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    r = run([tool("sluice-run"), "-m", path, "-p", "hi", "-n", 4])
    assert r.returncode == 1 and -r.returncode not in (6, 11), r.stderr  # no crash
    _one_line_model_error(r, path)


def test_prompt_longer_than_context(tool, demo_model):
    r = run([tool("sluice-run"), "-m", demo_model, "-p", "word " * 100, "--ctx", "32", "-n", 4])
    assert r.returncode == 1, r.stderr
    assert "longer than the context" in r.stderr and "--ctx" in r.stderr
