"""serve_bench.py — sluiced under load: starts the daemon on loopback with one model, runs
sluice-loadgen at several concurrencies over UDP and TCP, and measures the server's
overhead at concurrency 1 against sluice-run (same model, threads, prompt, greedy, same
run: sluice-run before the daemon starts and after it stops, so neither competes with the
other). Writes JSON and a table; never fails over a timing. Standard library only.
Driven by bench/serve (see there for the flags)."""
import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

PROMPT = "The history of the printing press begins"


def log(msg):
    print(f"bench/serve: {msg}", file=sys.stderr, flush=True)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (the daemon listens on both)."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


# ---- sluice-run, the offline baseline ----

def sluice_run(binary, model, threads, ngen, prompt):
    cmd = [binary, "-m", model, "-p", prompt, "-n", str(ngen), "--temp", "0", "-s", "1",
           "-t", str(threads), "--no-display-prompt"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"sluice-run exited {r.returncode}: {r.stderr.strip()[-300:]}")
    gm = re.search(r"generation: (\d+) tokens, (\d+) decode steps in ([\d.]+) s = ([\d.]+) tokens/s", r.stderr)
    pm = re.search(r"prompt: (\d+) tokens in ([\d.]+) s", r.stderr)
    if not gm or not pm:
        raise RuntimeError("could not parse sluice-run's summary")
    return {"gen_tokens": int(gm.group(1)), "decode_tps": float(gm.group(4)),
            "gen_s": float(gm.group(3)), "prompt_tokens": int(pm.group(1)), "prompt_s": float(pm.group(2)),
            "e2e_tps": int(gm.group(1)) / (float(pm.group(2)) + float(gm.group(3)))}


# ---- the daemon ----

class Daemon:
    def __init__(self, binary, model, threads, port, http_port, workdir):
        self.binary, self.port, self.http_port = binary, port, http_port
        self.conf = os.path.join(workdir, "sluice.conf")
        self.logpath = os.path.join(workdir, "sluiced.log")
        with open(self.conf, "w") as f:
            f.write(f"""; written by bench/serve
[model]
path = {os.path.abspath(model)}
[engine]
threads = {threads}
[dataplane]
transports = udp,tcp
udp_listen = 127.0.0.1:{port}
tcp_listen = 127.0.0.1:{port}
[limits]
max_concurrent_per_client = 1024
[metrics]
http_listen = 127.0.0.1:{http_port}
[log]
target = stderr
level = warning
[server]
drain_timeout_ms = 5000
[auth]
mode = off
""")
        self.proc = None

    def check_config(self):
        r = subprocess.run([self.binary, "--check-config", "-c", self.conf], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"sluiced --check-config failed ({r.returncode}): "
                               f"{(r.stderr or r.stdout).strip()[-500:]}")

    def start(self, ping_cli, timeout_s=180):
        self.logf = open(self.logpath, "w")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "LISTEN_FDS")}
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sluiced exited {self.proc.returncode} while starting: {self.log_tail()}")
            if self.ready(ping_cli):
                return
            time.sleep(0.25)
        raise RuntimeError(f"sluiced not ready after {timeout_s} s: {self.log_tail()}")

    def ready(self, ping_cli):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=1) as r:
                if r.status == 200:
                    return True
        except Exception:
            pass
        if ping_cli and os.access(ping_cli, os.X_OK):
            r = subprocess.run([ping_cli, "ping", "--tcp", "--host", "127.0.0.1", "--port", str(self.port)],
                               capture_output=True, timeout=10)
            return r.returncode == 0
        return False

    def stop(self):
        if not self.proc or self.proc.poll() is not None:
            if self.proc:
                self.logf.close()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log("sluiced did not stop 15 s after SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait()
        self.logf.close()

    def log_tail(self):
        try:
            if not self.logf.closed:
                self.logf.flush()
            with open(self.logpath) as f:
                return f.read()[-800:].strip()
        except OSError:
            return ""


# ---- the load generator ----

def loadgen(binary, port, transport, conc, nreq, ngen, prompt, duration, timeout, conns=None, workdir="."):
    out = os.path.join(workdir, f"lg-{transport}-{conc}.json")
    cmd = [binary, "--host", "127.0.0.1", "--port", str(port), f"--{transport}", "-c", str(conc), "-n", str(nreq),
           "--max-tokens", str(ngen), "--prompt", prompt, "--temp", "0", "--seed", "1", "--duration", str(duration),
           "--timeout", str(timeout), "--json", out, "-q"]
    if conns:
        cmd += ["--conns", str(conns)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 2 * timeout + 60)
    if r.returncode != 0:
        raise RuntimeError(f"sluice-loadgen exited {r.returncode}: {r.stderr.strip()[-300:]}")
    with open(out) as f:
        return json.load(f)


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def table(res):
    what = "fake server (tests/client)" if res["fake_server"] else "sluiced"
    lines = [f"{what} on loopback: {res['model_file']}, {res['threads']} engine threads, "
             f"max_tokens {res['max_tokens']}, {res['machine']}",
             "",
             f"{'transport':>9} {'conc':>5} {'reqs':>5} {'tokens/s':>10} {'req/s':>7} {'TTFT p50':>9} "
             f"{'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'errors':>7}  (latencies in ms)"]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"{r['transport']:>9} {r['concurrency']:>5}  failed: {r['error']}")
            continue
        L = r["latency_ms"]
        errs = ",".join(f"{k} {v}" for k, v in r["outcomes"].items() if k != "ok" and v) or "0"
        lines.append(f"{r['transport']:>9} {r['concurrency']:>5} {r['sent']:>5} {r['throughput_tokens_per_s']:>10.1f} "
                     f"{r['requests_per_s']:>7.2f} {fmt(L['ttft']['p50'], '.2f'):>9} {fmt(L['ttft']['p99'], '.2f'):>9} "
                     f"{fmt(L['inter_token']['p50'], '.2f'):>8} {fmt(L['inter_token']['p99'], '.2f'):>8} {errs:>7}")
    o = res.get("overhead")
    if o:
        lines += ["", "server overhead at concurrency 1 (decode tokens/s, same prompt, greedy):"]
        for t in ("udp", "tcp"):
            if t in o.get("server", {}):
                s = o["server"][t]
                lines.append(f"  {t}: server {fmt(s['decode_tps'])} vs sluice-run {fmt(o['sluice_run_decode_tps'])} "
                             f"= {fmt(s['decode_overhead_pct'], '+.1f')}% overhead; end to end "
                             f"{fmt(s['e2e_tps'])} vs {fmt(o['sluice_run_e2e_tps'])} = "
                             f"{fmt(s['e2e_overhead_pct'], '+.1f')}%")
    for n in res["notes"]:
        lines.append(f"note: {n}")
    return "\n".join(lines)


def overhead_pct(server, offline):
    if not server or not offline:
        return None
    return (offline / server - 1.0) * 100.0  # extra time per token through the server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("-n", "--ngen", type=int, default=64)
    ap.add_argument("-c", "--concurrency", default="1,8,32,128")
    ap.add_argument("-R", "--requests-per-worker", type=int, default=2)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("-d", "--duration", type=float, default=60)
    ap.add_argument("--transports", default="udp,tcp")
    ap.add_argument("--fake", action="store_true", help="against tests/client's fake server (driver check)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()

    build = a.build
    lg = os.path.join(build, "bench/sluice-loadgen")
    sluiced = os.path.join(build, "daemon/sluiced")
    run_bin = os.path.join(build, "tools/sluice-run")
    cli = os.path.join(build, "client/sluice")
    fake = os.path.join(build, "tests/client/sluice-fake-server")
    if not a.fake and not os.access(sluiced, os.X_OK):
        print(f"bench/serve: {sluiced} is not built yet (the daemon lands with issue 3's serving work); "
              "nothing measured. Build it (ninja -C BUILD) and rerun.")
        return 0
    for b in (lg,) + ((fake,) if a.fake else (run_bin,)):
        if not os.access(b, os.X_OK):
            log(f"{b}: not built (ninja -C {build})")
            return 1
    levels = [int(x) for x in a.concurrency.split(",") if x]
    transports = [t for t in a.transports.split(",") if t]
    res = {"machine": f"{cpu_model()}, {os.cpu_count()} CPUs", "host": platform.node(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model_file": os.path.basename(a.model),
           "threads": a.threads, "max_tokens": a.ngen, "prompt": PROMPT, "fake_server": a.fake,
           "command": " ".join(sys.argv), "runs": [], "notes": []}
    work = tempfile.mkdtemp(prefix="sluice-bench-")
    daemon = None
    offline = []
    rc = 0
    try:
        if a.fake:
            res["notes"].append("fake server (tests/client): no model, instant tokens; checks the driver only")
        else:
            # the offline baseline, half before the daemon starts
            for _ in range((a.reps + 1) // 2):
                try:
                    offline.append(sluice_run(run_bin, a.model, a.threads, a.ngen, PROMPT))
                except Exception as e:
                    res["notes"].append(f"sluice-run: {e}")
            daemon = Daemon(sluiced, a.model, a.threads, free_port(), free_port(), work)
            daemon.check_config()
            log(f"starting sluiced on 127.0.0.1:{daemon.port} (log {daemon.logpath})")
            t0 = time.monotonic()
            daemon.start(cli)
            res["daemon_start_s"] = round(time.monotonic() - t0, 3)
        overhead_server = {}
        for t in transports:
            fake_proc = None
            port = daemon.port if daemon else None
            if a.fake:
                fake_proc = subprocess.Popen([fake] + (["--tcp"] if t == "tcp" else []), stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, text=True)
                port = int(fake_proc.stdout.readline())
            try:
                if not a.fake:
                    # warm-up, then concurrency 1 with reps requests: the overhead figure
                    loadgen(lg, port, t, 1, 1, a.ngen, PROMPT, a.duration, 60, workdir=work)
                for c in levels:
                    nreq = max(a.reps if c == 1 else 8, c * a.requests_per_worker)
                    # the fake server takes 8 TCP connections: multiplex over them
                    conns = min(c, 8) if (a.fake and t == "tcp") else None
                    log(f"{t} concurrency {c}: {nreq} requests")
                    try:
                        r = loadgen(lg, port, t, c, nreq, a.ngen, PROMPT, a.duration, 60, conns, work)
                    except Exception as e:
                        r = {"transport": t, "concurrency": c, "error": str(e)}
                        res["notes"].append(f"{t} c={c}: {e}")
                    res["runs"].append(r)
                    if c == 1 and "error" not in r:
                        overhead_server[t] = r
            finally:
                if fake_proc:
                    fake_proc.stdin.close()
                    fake_proc.wait(timeout=10)
        if daemon:
            daemon.stop()
            res["daemon_log_tail"] = daemon.log_tail()
            daemon = None
            for _ in range(a.reps // 2):
                try:
                    offline.append(sluice_run(run_bin, a.model, a.threads, a.ngen, PROMPT))
                except Exception as e:
                    res["notes"].append(f"sluice-run: {e}")
        if offline:
            off_dec = statistics.median(x["decode_tps"] for x in offline)
            off_e2e = statistics.median(x["e2e_tps"] for x in offline)
            ov = {"sluice_run": offline, "sluice_run_decode_tps": off_dec, "sluice_run_e2e_tps": off_e2e,
                  "server": {}}
            for t, r in overhead_server.items():
                dec = r["decode_tokens_per_s_per_request"]
                e2e_ms = r["latency_ms"]["request"]["mean"]
                e2e = r["ok_tokens"] / max(1, r["outcomes"]["ok"]) / (e2e_ms / 1e3) if e2e_ms else None
                ov["server"][t] = {"decode_tps": dec, "e2e_tps": e2e,
                                   "decode_overhead_pct": overhead_pct(dec, off_dec),
                                   "e2e_overhead_pct": overhead_pct(e2e, off_e2e)}
                if offline[0]["gen_tokens"] * r["outcomes"]["ok"] != r["ok_tokens"]:
                    res["notes"].append(f"{t}: the server generated {r['ok_tokens']} tokens over "
                                        f"{r['outcomes']['ok']} requests, sluice-run {offline[0]['gen_tokens']} "
                                        "per run (EOS or a limit differs)")
            res["overhead"] = ov
    except Exception as e:
        res["notes"].append(f"aborted: {e}")
        log(str(e))
        rc = 1
    finally:
        if daemon:
            daemon.stop()
            res["daemon_log_tail"] = daemon.log_tail()
        shutil.rmtree(work, ignore_errors=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    txt = table(res)
    with open(os.path.splitext(a.out)[0] + ".txt", "w") as f:
        f.write(txt + "\n")
    print(txt)
    print(f"\nwritten: {a.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
