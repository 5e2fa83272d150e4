"""cpu_bench.py — sluice-run against llama.cpp (llama-cpp-python) on one model, one thread
count, one machine: prompt tokens/s (a ~128-token prompt) and generation tokens/s (128
tokens), median of several repetitions, as a ratio; and weight-load throughput, sluice's
io_uring load (sluice-probe load) against `dd iflag=direct` on the same file, after
dropping the page cache where permitted. Prints a table and writes JSON (-o). A timing
never fails the run; missing pieces are reported as null with the reason."""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes "
          "Gutenberg combined movable metal type, oil-based ink and a wooden press adapted from "
          "wine making. Within fifty years presses were running in more than two hundred cities "
          "across Europe, and the price of books fell so far that ordinary merchants could own "
          "them. Historians still argue about how much of the Reformation, the scientific "
          "revolution and the rise of vernacular literature followed from this one machine. "
          "Write a short essay on the question, with examples:")


def drop_caches():
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True, "dropped"
    except OSError as e:
        return False, f"could not drop the page cache ({e.strerror}); reads may be served from memory"


def sluice_run(run_bin, model, threads, n_gen):
    r = subprocess.run([run_bin, "-m", model, "-p", PROMPT, "-n", str(n_gen), "--temp", "0",
                        "-t", str(threads), "--no-display-prompt", "--ctx", "1024"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    pm = re.search(r"prompt: (\d+) tokens in [\d.]+ s = ([\d.]+) tokens/s", r.stderr)
    gm = re.search(r"generation: (\d+) tokens, (\d+) decode steps in [\d.]+ s = ([\d.]+) tokens/s", r.stderr)
    if not pm or not gm:
        raise RuntimeError("could not parse sluice-run's summary")
    return dict(prompt_tokens=int(pm.group(1)), prompt_tps=float(pm.group(2)),
                gen_tokens=int(gm.group(1)), gen_tps=float(gm.group(3)))


def llama_cpp_run(llm, n_gen):
    """Same work as sluice-run: prefill the prompt in one go, then n_gen greedy steps."""
    import numpy as np
    ids = llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    t1 = time.perf_counter()
    steps = 0
    for _ in range(n_gen):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if steps + 1 == n_gen:
            break
        llm.eval([tok])
        steps += 1
    t2 = time.perf_counter()
    return dict(prompt_tokens=len(ids), prompt_tps=len(ids) / (t1 - t0),
                gen_tokens=n_gen, gen_tps=steps / (t2 - t1) if steps else 0.0)


def dd_direct(model):
    r = subprocess.run(["dd", f"if={model}", "of=/dev/null", "bs=4M", "iflag=direct"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "dd failed")
    m = re.search(r"(\d+) bytes .* copied, ([\d.e+-]+) s", r.stderr)
    if not m:
        raise RuntimeError("could not parse dd's output")
    return int(m.group(1)) / float(m.group(2)) / 1e9


def sluice_load(probe_bin, model):
    r = subprocess.run([probe_bin, "load", "-m", model], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"exit {r.returncode}")
    return json.loads(r.stdout)


def med(xs):
    return statistics.median(xs) if xs else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("-n", "--n-gen", type=int, default=128)
    ap.add_argument("-o", "--output")
    a = ap.parse_args()
    build = pathlib.Path(a.build)
    run_bin, probe_bin = build / "tools/sluice-run", build / "tools/sluice-probe"
    out = dict(model=a.model, threads=a.threads, reps=a.reps, n_gen=a.n_gen,
               machine=os.uname().nodename, notes=[])

    # ---- load throughput: drop caches before each reader so both read the disk ----
    loads, dds = [], []
    for _ in range(a.reps):
        ok, why = drop_caches()
        try:
            s = sluice_load(probe_bin, a.model)
            loads.append(s["gb_per_s"])
            out["direct_io"] = s["direct_io"]
        except Exception as e:  # noqa: BLE001 - reported, never fatal
            out["notes"].append(f"sluice load: {e}")
            break
        drop_caches()
        try:
            dds.append(dd_direct(a.model))
        except Exception as e:  # noqa: BLE001
            out["notes"].append(f"dd: {e}")
            break
    if not ok:
        out["notes"].append(why)
    out["page_cache_dropped"] = ok
    out["load_gbps"] = dict(sluice=med(loads), dd_direct=med(dds),
                            ratio=med(loads) / med(dds) if loads and dds else None)

    # ---- speed ----
    ours = []
    for _ in range(a.reps):
        try:
            ours.append(sluice_run(run_bin, a.model, a.threads, a.n_gen))
        except Exception as e:  # noqa: BLE001
            out["notes"].append(f"sluice-run: {e}")
            break
    theirs = []
    try:
        import llama_cpp
        llm = llama_cpp.Llama(a.model, n_ctx=1024, n_batch=512, n_threads=a.threads,
                              n_threads_batch=a.threads, logits_all=False, verbose=False)
        for _ in range(a.reps):
            theirs.append(llama_cpp_run(llm, a.n_gen))
        llm.close()
    except Exception as e:  # noqa: BLE001
        out["notes"].append(f"llama.cpp: {e}")

    def summary(rs):
        if not rs:
            return None
        return dict(prompt_tokens=rs[0]["prompt_tokens"], prompt_tps=med([r["prompt_tps"] for r in rs]),
                    gen_tokens=rs[0]["gen_tokens"], gen_tps=med([r["gen_tps"] for r in rs]))

    out["sluice"], out["llama_cpp"] = summary(ours), summary(theirs)
    if out["sluice"] and out["llama_cpp"]:
        out["ratio"] = dict(prompt=out["sluice"]["prompt_tps"] / out["llama_cpp"]["prompt_tps"],
                            gen=out["sluice"]["gen_tps"] / out["llama_cpp"]["gen_tps"])

    def f(x, fmt="{:.2f}"):
        return "n/a" if x is None else fmt.format(x)

    s, l = out["sluice"] or {}, out["llama_cpp"] or {}
    r = out.get("ratio", {})
    print(f"model {a.model}, {a.threads} threads, median of {a.reps}")
    print(f"{'':24}{'sluice':>12}{'llama.cpp':>12}{'ratio':>10}")
    print(f"{'prompt tokens/s':24}{f(s.get('prompt_tps')):>12}{f(l.get('prompt_tps')):>12}{f(r.get('prompt')):>10}"
          f"   ({s.get('prompt_tokens', '?')} tokens)")
    print(f"{'generation tokens/s':24}{f(s.get('gen_tps')):>12}{f(l.get('gen_tps')):>12}{f(r.get('gen')):>10}"
          f"   ({a.n_gen} tokens)")
    lg = out["load_gbps"]
    print(f"{'load GB/s':24}{f(lg['sluice']):>12}{'dd: ' + f(lg['dd_direct']):>12}{f(lg['ratio']):>10}"
          f"   (O_DIRECT: {out.get('direct_io')}, page cache dropped: {ok})")
    for n in out["notes"]:
        print(f"note: {n}")
    js = json.dumps(out, indent=2)
    if a.output:
        pathlib.Path(a.output).write_text(js + "\n")
    print(js)
    return 0


if __name__ == "__main__":
    sys.exit(main())
