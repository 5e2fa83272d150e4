#!/usr/bin/env python3
"""daemon_oracle.py — the CUDA backend through the whole daemon: the same prompts, greedy,
32 requests at once, once with [engine] backend = cpu and once with backend = cuda:
  - through the `sluice` CLI (text prompts): the texts;
  - over the protocol with prompt token ids (random ids), collecting the generated ids.
Every output must be equal, except where the first difference is a near-tie of the model
(random weights have many): checked with `test-cuda-backend --margins`, which computes the
CPU backend's logit margin between the two picks at that point against twice the largest
CPU/GPU logit difference of the model. Also reads /metrics (KV pool, graph steps) and
/health of the CUDA run, and checks that the CUDA daemon's GPU read the id prompts in its
request ring, where the TCP transport wrote them (the ring mapped for the GPU, and
sluice_prompt_tokens_in_place_total covering every prompt id but at most each prompt's last,
which a chunk boundary may leave to the step's input).

    tests/gpu/daemon_oracle.py --sluiced BUILD/daemon/sluiced --sluice BUILD/client/sluice \
        --model M.gguf [--n 32] [--tokens 32] [--json OUT]

Exit 0 all equal, 1 otherwise, 77 when the CUDA daemon cannot start (no GPU)."""
import argparse
import concurrent.futures
import json
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
from sluiced_helper import OP, Daemon, TcpConn, frame, generate_payload, parse_tokens  # noqa: E402

WORDS = ("river stone light quiet engine number garden paper window cloud signal morning copper "
         "forest letter bridge winter orange market silver").split()


def prompts(n):
    out = []
    for i in range(n):
        w = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 5)]
        out.append(f"Request {i}: " + " ".join(w))
    return out


def id_prompts(n, vocab, seed=7):
    import random
    r = random.Random(seed)
    return [[r.randrange(vocab) for _ in range(12 + i % 9)] for i in range(n)]


def gen_ids(port, rid, ids, tokens):
    c = TcpConn(port, timeout=600)
    c.send(frame(OP["GENERATE"], rid, generate_payload(ids=ids, max_tokens=tokens, temperature=0.0), crc=False))
    out = []
    while True:
        f = c.recv_frame()
        if f is None:
            break
        op, fl, r, seq, p = f
        if op == OP["TOKENS"]:
            out += parse_tokens(p)[0]
        else:
            break
    c.close()
    return out


def run_backend(args, backend, tmp, texts, idp):
    conf = (f"[model]\npath = {args.model}\n[dataplane]\nudp_listen = 127.0.0.1:0\ntcp_listen = 127.0.0.1:0\n"
            f"[metrics]\nhttp_listen = 127.0.0.1:0\n[engine]\nbackend = {backend}\nthreads = 0\n"
            f"max_running = {args.n}\nmax_queued = {2 * args.n}\ntoken_budget = 512\nprefill_chunk = 256\n"
            + ("kv_blocks = 4096\n" if backend == "cpu" else "")
            + "[log]\ntarget = stderr\n[auth]\nmode = off\n")
    d = Daemon(args.sluiced, args.model, tmp, config_text=conf)
    t0 = time.monotonic()
    try:
        d.wait_ready(timeout=600)
    except AssertionError as e:
        if backend == "cuda":
            print(f"SKIP: the CUDA daemon did not start: {str(e)[-600:]}")
            sys.exit(77)
        raise
    ready_s = time.monotonic() - t0

    def one(p):
        r = subprocess.run([args.sluice, "--tcp", "-p", str(d.tcp), "-q", "--timeout", "120000", "generate",
                            "-n", str(args.tokens), "--temp", "0", p], capture_output=True, timeout=600)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    t1 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(args.n) as ex:
        res = list(ex.map(one, texts))
    gen_s = time.monotonic() - t1
    with concurrent.futures.ThreadPoolExecutor(args.n) as ex:
        ids = list(ex.map(lambda a: gen_ids(d.tcp, 1000 + a[0], a[1], args.tokens), enumerate(idp)))
    if backend == "cuda":  # the engine thread publishes its counters every 200 ms
        try:
            d.wait_metric("sluice_engine_graph_steps_total", lambda v: v > 0, 3)
        except AssertionError as e:
            print(f"note: {e}")
        n_ids = sum(len(p) for p in idp)
        try:
            d.wait_metric("sluice_prompt_tokens_in_place_total", lambda v: n_ids - len(idp) <= v <= n_ids, 3)
        except AssertionError as e:
            print(f"note: {e}")
    m = d.metrics()
    health = d.health()
    log = d.log()
    rc = d.stop()
    return {"results": res, "ids": ids, "metrics": m, "health": health, "ready_s": ready_s, "gen_s": gen_s,
            "rc": rc, "log_tail": log[-1500:], "ring_mapped": "tcp request ring: " in log and
            "mapped for the GPU (prefill reads" in log}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluiced", required=True)
    ap.add_argument("--sluice", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--json")
    ap.add_argument("--margins", help="test-cuda-backend binary, for near-tie checks")
    ap.add_argument("--vocab", type=int, default=32000, help="ids of the id prompts are below this")
    args = ap.parse_args()
    texts = prompts(args.n)
    idp = id_prompts(args.n, args.vocab)
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        cpu = run_backend(args, "cpu", tmp, texts, idp)
        gpu = run_backend(args, "cuda", tmp, texts, idp)
        # id outputs: where they differ, is the first difference a near-tie?
        diffs = []
        for i in range(args.n):
            a, b = cpu["ids"][i], gpu["ids"][i]
            if a == b:
                continue
            k = 0
            while k < min(len(a), len(b)) and a[k] == b[k]:
                k += 1
            diffs.append((i, k, a[k] if k < len(a) else -1, b[k] if k < len(b) else -1))
        explained = {}
        if diffs and args.margins:
            f = tmp / "margins.txt"
            f.write_text("".join(",".join(map(str, idp[i] + cpu["ids"][i][:k])) + f";{ta};{tb}\n"
                                 for i, k, ta, tb in diffs))
            r = subprocess.run([args.margins, "--margins", args.model, str(f)], capture_output=True, text=True,
                               timeout=600)
            lines = [l for l in r.stdout.splitlines() if l and l[0] in "-0123456789n"]
            for (i, k, ta, tb), l in zip(diffs, lines[-len(diffs):]):
                m, tol = (float(x) for x in l.split())
                explained[i] = (m, tol, m == m and m <= tol)
    bad = [i for i in range(args.n) if cpu["results"][i][0] != 0 or gpu["results"][i][0] != 0]
    same = [i for i in range(args.n) if cpu["results"][i][1] == gpu["results"][i][1] and i not in bad]
    km = {k: v for k, v in gpu["metrics"].items() if "kv" in k or "graph" in k or "eager" in k or "gpu" in k
          or "launch" in k}
    print(f"cpu: ready in {cpu['ready_s']:.1f} s, {args.n} requests in {cpu['gen_s']:.1f} s")
    print(f"cuda: ready in {gpu['ready_s']:.1f} s, {args.n} requests in {gpu['gen_s']:.1f} s, health {gpu['health']}")
    for k in sorted(km):
        print(f"  {k} = {km[k]:g}")
    for i in range(args.n):
        if i not in same:
            print(f"request {i}: cpu rc {cpu['results'][i][0]} {cpu['results'][i][1]!r} {cpu['results'][i][2][-200:]!r}")
            print(f"            cuda rc {gpu['results'][i][0]} {gpu['results'][i][1]!r} {gpu['results'][i][2][-200:]!r}")
    ids_same = sum(cpu["ids"][i] == gpu["ids"][i] for i in range(args.n))
    for i, k, ta, tb in diffs:
        m = explained.get(i)
        print(f"id prompt {i}: differs at token {k} (CPU {ta}, GPU {tb})" +
              (f": CPU margin {m[0]:.3e}, tolerance {m[1]:.3e}: {'near-tie' if m[2] else 'NOT a near-tie'}" if m else ""))
    ids_ok = all(explained.get(i, (0, 0, False))[2] for i, _, _, _ in diffs)
    ids_empty = [i for i in range(args.n) if not cpu["ids"][i] or not gpu["ids"][i]]
    n_ids = sum(len(p) for p in idp)
    in_place = gpu["metrics"].get("sluice_prompt_tokens_in_place_total", 0)
    ring_ok = gpu["ring_mapped"] and n_ids - args.n <= in_place <= n_ids
    print(f"{'PASS' if ring_ok else 'FAIL'}: cuda daemon: tcp request ring mapped for the GPU: {gpu['ring_mapped']}; "
          f"prompt ids read in place {in_place:g} of {n_ids} (at least {n_ids - args.n} expected)")
    ok = ids_ok and not ids_empty and not bad and gpu["rc"] == 0 and ring_ok
    print(f"{'PASS' if ok else 'FAIL'}: token ids: {ids_same}/{args.n} equal, {len(diffs) - sum(not v[2] for v in explained.values())} "
          f"differ after a near-tie; texts (sluice CLI): {len(same)}/{args.n} equal; CPU backend vs CUDA backend "
          f"through sluiced ({args.n} concurrent, {args.tokens} tokens each); cuda daemon exit {gpu['rc']}")
    if not ok:
        print(gpu["log_tail"])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({
            "ids_equal": ids_same, "ids_near_tie": [i for i in explained if explained[i][2]],
            "prompt_ids": n_ids, "prompt_ids_in_place": in_place, "ring_mapped": gpu["ring_mapped"],
            "equal": len(same), "of": args.n, "tokens": args.tokens, "errors": bad, "cuda_metrics": km,
            "cpu_ready_s": cpu["ready_s"], "cuda_ready_s": gpu["ready_s"], "cpu_gen_s": cpu["gen_s"],
            "cuda_gen_s": gpu["gen_s"]}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
