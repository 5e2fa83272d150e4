#!/usr/bin/env python3
"""fault_test.py — a CUDA error while serving, through the whole daemon: sluiced-gpufault
(sluiced with tests/gpu/fault_inject.cu wrapped around the scheduler's step launches) runs
[engine] backend = cuda; once --after steps have run with all --n requests in the batch, a
__trap() kernel kills the CUDA context (a sticky error). Checks, for each --modes entry
(trap: the backend meets the error while waiting for a step; trap-sync: when launching one):
  - the fault fired (the wrapper's line in the log);
  - no request hangs: every `sluice generate` ends within --timeout;
  - every request ends with an ERROR frame from the server (the CLI's exit 1 and
    "generate: INTERNAL: ..."), none completes, none loses its connection instead;
  - /health (polled every 10 ms) turns degraded; the daemon only stays up until nothing is
    in flight, so a missed degraded state is reported, not failed;
  - the daemon exits by itself with a non-zero status within --exit-timeout, not by a signal;
  - its log says the GPU failed.

    tests/gpu/fault_test.py --sluiced BUILD/tests/gpu/sluiced-gpufault --sluice BUILD/client/sluice \
        --model M.gguf [--after 20] [--n 8] [--tokens 64] [--modes trap,trap-sync] [--json OUT]

Exit 0 all passed, 1 a failure, 77 when the CUDA daemon cannot start (no GPU)."""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
from sluiced_helper import Daemon  # noqa: E402

MODES = ("trap", "trap-sync")


def config(args):
    return (f"[model]\npath = {args.model}\n[dataplane]\nudp_listen = 127.0.0.1:0\ntcp_listen = 127.0.0.1:0\n"
            f"[metrics]\nhttp_listen = 127.0.0.1:0\n[engine]\nbackend = cuda\nmax_running = {args.n}\n"
            f"max_queued = {2 * args.n}\ntoken_budget = 512\nprefill_chunk = 256\n"
            "[log]\ntarget = stderr\n[auth]\nmode = off\n")


def poll_health(port, proc, stop, seen):
    """Appends (seconds, state) to seen at every change of /health, until stop or exit."""
    t0, last = time.monotonic(), None
    while not stop.is_set() and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                state = r.read().decode().strip()
        except urllib.error.HTTPError as e:
            state = e.read().decode().strip()
        except OSError:
            state = "unreachable"
        if state != last:
            seen.append((round(time.monotonic() - t0, 3), state))
            last = state
        time.sleep(0.01)


def run_mode(args, mode, tmp):
    env = {"SLUICE_FAULT_AFTER_STEPS": str(args.after), "SLUICE_FAULT_MIN_ROWS": str(args.min_rows or args.n),
           "SLUICE_FAULT_MODE": mode}
    d = Daemon(args.sluiced, args.model, tmp, env=env, config_text=config(args))
    try:
        d.wait_ready(timeout=600)
    except AssertionError as e:
        print(f"SKIP: the CUDA daemon did not start: {str(e)[-600:]}")
        d.stop()
        sys.exit(77)
    seen, stop = [], threading.Event()
    th = threading.Thread(target=poll_health, args=(d.http, d.p, stop, seen), daemon=True)
    th.start()

    # all clients at once; the wrapper waits for all of them to be in one batch
    cmd = [args.sluice, "--tcp", "-p", str(d.tcp), "-q", "--timeout", str(int(args.timeout * 2000)), "generate",
           "-n", str(args.tokens), "--temp", "0"]
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd + [f"Request {i}: the river and the stone under a quiet morning"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(args.n)]
    reqs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=max(0.1, t0 + args.timeout - time.monotonic()))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            rc = None  # hung
        err = err.decode(errors="replace")
        m = re.search(r"generate: ([A-Z_]+): ", err)
        reqs.append({"rc": rc, "server_error": m.group(1) if m else None, "stderr": err.strip()[-300:],
                     "text_bytes": len(out), "s": round(time.monotonic() - t0, 3)})
    t_req = time.monotonic()
    try:
        rc = d.p.wait(args.exit_timeout)
        exit_s = time.monotonic() - t_req
    except subprocess.TimeoutExpired:
        rc, exit_s = None, None
    stop.set()
    th.join(5)
    d.stop()  # when still running: SIGTERM, then SIGKILL
    log = d.log()

    fired = re.search(r"^fault-inject: step .*$", log, re.M)
    gpu_failed = re.search(r"^.*the GPU failed.*$", log, re.M)
    states = [s for _, s in seen]
    checks = {
        "fault injected": bool(fired) and "NOT launched" not in fired.group(0),
        "no request hangs": all(r["rc"] is not None for r in reqs),
        "every request ends with ERROR": all(r["rc"] == 1 and r["server_error"] == "INTERNAL" for r in reqs),
        "daemon exits non-zero by itself": rc is not None and rc > 0,
        "log says the GPU failed": bool(gpu_failed),
    }
    notes = []
    if "degraded" not in states:
        notes.append("/health: degraded not observed" + (" (the daemon left before a poll saw it)" if rc else ""))
    if rc is not None and rc != 1:
        notes.append(f"exit status {rc}, 1 expected")
    return {"mode": mode, "after": args.after, "checks": checks, "notes": notes, "requests": reqs,
            "health": seen, "degraded_seen": "degraded" in states, "exit_status": rc,
            "exit_s_after_requests": None if exit_s is None else round(exit_s, 3),
            "fault_line": fired.group(0) if fired else None, "gpu_failed_line": gpu_failed.group(0) if gpu_failed else None,
            "log_tail": log[-2500:]}


def main():
    ap = argparse.ArgumentParser(description="A CUDA error while serving: requests fail, /health degraded, exit non-zero.")
    ap.add_argument("--sluiced", required=True, help="sluiced-gpufault")
    ap.add_argument("--sluice", required=True, help="the sluice CLI")
    ap.add_argument("--model", required=True, help="a GGUF model the CUDA backend takes")
    ap.add_argument("--after", type=int, default=20, help="steps before the fault (SLUICE_FAULT_AFTER_STEPS)")
    ap.add_argument("--min-rows", type=int, default=0,
                    help="rows the faulting step must sample (SLUICE_FAULT_MIN_ROWS; default --n)")
    ap.add_argument("--n", type=int, default=8, help="concurrent requests")
    ap.add_argument("--tokens", type=int, default=64, help="tokens each request asks for")
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--timeout", type=float, default=60, help="seconds for every request to end")
    ap.add_argument("--exit-timeout", type=float, default=20,
                    help="seconds after the last request for the daemon to exit")
    ap.add_argument("--json")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes: {args.modes!r}: each of {', '.join(MODES)}")
    if args.n < 1 or args.tokens <= args.after or args.after < 0:
        ap.error("--n >= 1 and --tokens > --after >= 0 (the requests must still run when the fault comes)")

    results = []
    with tempfile.TemporaryDirectory() as t:
        for mode in modes:
            res = run_mode(args, mode, pathlib.Path(t))
            results.append(res)
            ok = all(res["checks"].values())
            print(f"== mode {mode}: fault after {args.after} steps, {args.n} requests of {args.tokens} tokens")
            print(f"  {res['fault_line'] or 'no fault-inject line in the log'}")
            print(f"  {res['gpu_failed_line'] or 'no GPU failure in the log'}")
            print(f"  /health: {' -> '.join(f'{s} ({ts:.2f} s)' for ts, s in res['health'])}")
            print(f"  daemon exit status {res['exit_status']}, {res['exit_s_after_requests']} s after the last request")
            for r in res["requests"]:
                if r["rc"] != 1 or r["server_error"] != "INTERNAL":
                    print(f"  request: rc {r['rc']} after {r['s']} s: {r['stderr']!r}")
            for k, v in res["checks"].items():
                print(f"  {'ok  ' if v else 'FAIL'} {k}")
            for n in res["notes"]:
                print(f"  note: {n}")
            if not ok:
                print(res["log_tail"])
    ok = all(all(r["checks"].values()) for r in results)
    print(f"{'PASS' if ok else 'FAIL'}: a CUDA error while serving ({', '.join(modes)}): "
          + "; ".join(f"{r['mode']}: {sum(r['checks'].values())}/{len(r['checks'])} checks, "
                      f"health {'degraded' if r['degraded_seen'] else 'degraded not seen'}, exit {r['exit_status']}"
                      for r in results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"pass": ok, "modes": results}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
