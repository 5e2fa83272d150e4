"""sluiced end to end: the real daemon on 127.0.0.1 (ports from the kernel), the real `sluice`
CLI and raw protocol frames (sluiced_helper.py). Greedy text through the server equals
sluice-run's offline text over UDP and TCP; 32 concurrent clients; cancel and vanished
clients free their KV blocks; overload gives BUSY, never a crash; bad frames get the
documented answer and the server keeps serving; sd_notify, SIGHUP reload and SIGTERM drain
against a real NOTIFY_SOCKET; --check-config. Every wait is bounded."""
import concurrent.futures as cf
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import run
from sluiced_helper import ERR, OP, Daemon, TcpConn, UdpConn, frame, generate_payload, parse, parse_done, with_cookie, \
    parse_error, parse_tokens

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Hello, my name is",
           "The quick brown fox", "In 1492, Columbus", "Water boils at", "My favourite food is"]


@pytest.fixture(scope="session")
def sluiced(build_dir):
    p = build_dir / "daemon" / "sluiced"
    if not p.exists():
        pytest.fail(f"sluiced not built in {build_dir}")
    return p


@pytest.fixture(scope="session")
def cli(build_dir):
    return build_dir / "client" / "sluice"


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A 2-layer llama with a real SentencePiece vocabulary: fast on 2 cores."""
    try:
        import genmodel
    except ImportError as e:
        pytest.skip(f"genmodel needs numpy and gguf: {e}")
    if not (genmodel.VOCAB_DIR / "ggml-vocab-llama-spm.gguf").exists():
        pytest.skip(f"reference vocabularies not found in {genmodel.VOCAB_DIR}")
    p = tmp_path_factory.mktemp("model") / "llama2-q8.gguf"
    genmodel.write_model(p, "llama2", "Q8_0")
    return p


@pytest.fixture
def daemon(sluiced, small_model, tmp_path):
    started = []

    def start(overrides=(), model=None, env=None, config_text=None, ready=True):
        d = Daemon(sluiced, model or small_model, tmp_path, overrides, env, config_text)
        started.append(d)
        return d.wait_ready() if ready else d

    yield start
    for d in started:
        if d.alive():
            d.p.kill()
            d.p.wait(5)


def offline(tool, model, prompt, n):
    r = run([tool("sluice-run"), "-m", model, "-p", prompt, "-n", n, "--temp", "0", "-t", 2,
             "--no-display-prompt"], timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def cli_generate(cli, d, transport, prompt, n, extra=(), timeout=60):
    return run([cli, f"--{transport}", "-H", "127.0.0.1", "-p", d.port(transport), "--timeout", 30000,
                "generate", "-n", n, "--temp", 0, *extra, prompt], timeout=timeout)


# ---- correctness ----

@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_greedy_equals_sluice_run(daemon, cli, tool, small_model, transport):
    d = daemon()
    want = offline(tool, small_model, PROMPTS[0], 24)
    r = cli_generate(cli, d, transport, PROMPTS[0], 24)
    assert r.returncode == 0, r.stderr
    assert r.stdout == want, f"server {r.stdout!r}\noffline {want!r}"
    assert "finish length" in r.stderr and "generated 24 tokens" in r.stderr


def test_demo_model_greedy_equals_sluice_run(daemon, cli, tool, demo_model):
    d = daemon(model=demo_model, overrides=["engine.kv_blocks=128"])
    want = offline(tool, demo_model, PROMPTS[0], 16)
    for transport in ("udp", "tcp"):
        r = cli_generate(cli, d, transport, PROMPTS[0], 16)
        assert r.returncode == 0, r.stderr
        assert r.stdout == want, f"{transport}: server {r.stdout!r}\noffline {want!r}"


def test_32_concurrent_clients(daemon, cli, tool, small_model):
    d = daemon()
    n = 16
    want = {p: offline(tool, small_model, p, n) for p in PROMPTS}
    jobs = [(("udp", "tcp")[i % 2], PROMPTS[i % len(PROMPTS)]) for i in range(32)]
    with cf.ThreadPoolExecutor(32) as ex:
        res = list(ex.map(lambda j: cli_generate(cli, d, j[0], j[1], n, timeout=120), jobs))
    for (transport, prompt), r in zip(jobs, res):
        assert r.returncode == 0, f"{transport} {prompt!r}: {r.stderr}"
        assert r.stdout == want[prompt], f"{transport} {prompt!r}: {r.stdout!r} != {want[prompt]!r}"
    m = d.metrics()
    assert m['sluice_requests_total{outcome="length"}'] == 32
    assert m["sluice_generated_tokens_total"] == 32 * n
    # transport counters reach /metrics from the engine thread every 200 ms
    for t in ("udp", "tcp"):
        d.wait_metric(f'sluice_transport_rx_frames_total{{transport="{t}"}}', lambda v: v > 0)


def test_id_prompts_read_in_the_request_ring(daemon):
    """A token-id prompt that is 4-byte aligned in its request record is read there by the
    prefill (the engine holds the record, then gives its ring space back): 300 prompts of
    1024 ids, 1.2 MiB through a 1 MiB ring, so space that was not given back would end in
    BUSY or a hang. The tokens equal those of the same ids sent unaligned (a 1-byte stop
    string), which the engine copies."""
    d = daemon(overrides=["engine.max_running=4", "engine.threads=2"])
    c = TcpConn(d.tcp, timeout=60)
    n_req, n_ids, window = 300, 1024, 4  # max_running, and room in the KV pool: none waits in the queue
    prompts = {}
    x = 12345

    def ids_for(rid):
        nonlocal x
        out = []
        for _ in range(n_ids):
            x = (x * 6364136223846793005 + 1442695040888963407) % 2**64
            out.append(3 + (x >> 33) % 31000)
        return out

    def run_all(rids, stops=()):
        got, sent, done = {}, 0, 0
        while done < len(rids):
            while sent < len(rids) and sent - done < window:
                rid = rids[sent]
                c.send(frame(OP["GENERATE"], rid, generate_payload(ids=prompts[rid], max_tokens=2, stops=stops),
                             crc=False))
                sent += 1
            op, fl, rid, seq, p = c.recv_frame()
            if op == OP["TOKENS"]:
                got.setdefault(rid, []).extend(parse_tokens(p)[0])
            else:
                assert op == OP["DONE"], (op, parse_error(p) if op == OP["ERROR"] else p)
                done += 1
        return got

    for rid in range(1, n_req + 1):
        prompts[rid] = ids_for(rid)
    # refused after their ids were found in place (top_k over the vocabulary): each must give
    # its hold entry back, or the 300 below would run out of them and be copied
    for rid in range(1, 201):
        c.send(frame(OP["GENERATE"], 5000 + rid, generate_payload(ids=prompts[rid][:8], max_tokens=2,
                                                                  top_k=1_000_000), crc=False))
        op, fl, r, seq, p = c.recv_frame()
        assert op == OP["ERROR"] and parse_error(p)["code"] == ERR["BAD_PARAM"], (op, p)
    in_place = run_all(list(range(1, n_req + 1)))
    copied = run_all(list(range(1, 9)), stops=(b"\x01",))
    for rid in range(1, 9):
        assert in_place[rid] == copied[rid], rid
    assert len(in_place) == n_req and all(len(v) >= 1 for v in in_place.values())
    m = d.metrics()
    assert m['sluice_requests_total{outcome="busy"}'] == 0
    assert m['sluice_prompt_reads_total{source="copy"}'] == 8
    assert m['sluice_prompt_reads_total{source="in_place"}'] == n_req + 200  # the refused ones too
    # every id but, at most, a prompt's last one (when a chunk boundary leaves it alone, it
    # goes into the step's input as a decode token does)
    d.wait_metric("sluice_prompt_tokens_in_place_total", lambda v: n_req * (n_ids - 1) <= v <= n_req * n_ids, 3)
    c.close()


def test_tokenize_info_ping(daemon, cli):
    d = daemon()
    for t in ("udp", "tcp"):
        base = [cli, f"--{t}", "-H", "127.0.0.1", "-p", d.port(t)]
        r = run(base + ["tokenize", "Hello world"], timeout=20)
        assert r.returncode == 0 and len(r.stdout.split()) >= 2, r.stderr
        r = run(base + ["info"], timeout=20)
        assert r.returncode == 0 and "model: sluice-test-llama2-Q8_0" in r.stdout, r.stdout + r.stderr
        assert "kv_blocks_total: 512" in r.stdout
        r = run(base + ["ping"], timeout=20)
        assert r.returncode == 0 and "kv_blocks_free 512/512" in r.stdout, r.stdout + r.stderr


# ---- cancellation and leases ----

def test_cancel_mid_stream_frees_kv(daemon):
    d = daemon(overrides=["limits.max_new_tokens=4000", "engine.threads=1"])
    c = TcpConn(d.tcp)
    c.send(frame(OP["GENERATE"], 77, generate_payload(b"Once upon a time", max_tokens=4000), crc=False))
    got = 0
    while got < 5:
        op, fl, rid, seq, p = c.recv_frame()
        assert op == OP["TOKENS"] and rid == 77
        got += 1
    d.wait_metric("sluice_kv_blocks_used", lambda v: v > 0, 5)
    c.send(frame(OP["CANCEL"], 77, crc=False))
    while True:
        op, fl, rid, seq, p = c.recv_frame()
        if op != OP["TOKENS"]:
            break
    assert op == OP["DONE"], (op, p)
    assert parse_done(p)["reason"] == 4  # cancelled
    d.wait_metric("sluice_kv_blocks_used", lambda v: v == 0, 5)
    assert d.metrics()['sluice_requests_total{outcome="cancelled"}'] == 1
    c.close()


def test_udp_client_that_never_acks_loses_the_request_not_frames(daemon):
    """The server keeps every unacknowledged frame; a client that acknowledges none of a
    64-frame window gets a terminal CANCELLED at seq 64, never a silent hole, and the engine
    stops generating for it (docs/protocol.md §5.2)."""
    d = daemon(overrides=["limits.max_new_tokens=4000", "engine.threads=1"])
    u = UdpConn(d.udp)
    u.send(frame(OP["GENERATE"], 91, generate_payload(b"Once upon a time", max_tokens=400)))
    seqs = []
    while True:
        op, fl, rid, seq, p = u.recv_frame()
        assert rid == 91
        seqs.append(seq)
        if op != OP["TOKENS"]:
            break
    assert op == OP["ERROR"], (op, p)
    e = parse_error(p)
    assert e["code"] == ERR["CANCELLED"] and e["terminal"], e
    assert seqs == list(range(65)), "frames before the window edge must all arrive, in order"
    d.wait_metric("sluice_kv_blocks_used", lambda v: v == 0, 5)
    d.wait_metric('sluice_transport_drops_total{transport="udp"}', lambda v: v >= 1)
    u.close()


def test_vanished_udp_client_cleaned_after_lease(daemon):
    d = daemon(overrides=["limits.max_new_tokens=4000", "limits.udp_lease_ms=1000", "engine.threads=1"])
    u = UdpConn(d.udp)
    u.send(frame(OP["GENERATE"], 99, generate_payload(b"Once upon a time", max_tokens=4000)))
    op, *_ = u.recv_frame()
    assert op == OP["TOKENS"]
    u.close()  # gone: no ACK, no RESEND
    d.wait_metric("sluice_kv_blocks_used", lambda v: v == 0, 8)
    d.wait_metric('sluice_requests_total{outcome="cancelled"}', lambda v: v == 1, 3)
    assert d.metrics()['sluice_requests_total{outcome="length"}'] == 0


def test_vanished_tcp_client_cleaned(daemon):
    d = daemon(overrides=["limits.max_new_tokens=4000", "engine.threads=1"])
    c = TcpConn(d.tcp)
    c.send(frame(OP["GENERATE"], 5, generate_payload(b"Once upon a time", max_tokens=4000), crc=False))
    assert c.recv_frame()[0] == OP["TOKENS"]
    c.close()
    d.wait_metric("sluice_kv_blocks_used", lambda v: v == 0, 5)
    d.wait_metric('sluice_requests_total{outcome="cancelled"}', lambda v: v == 1, 3)


# ---- overload ----

def test_overload_busy_then_normal(daemon, cli, tool, small_model):
    # 2 running + 2 queued, 16 KV blocks (~3 requests of 70 tokens): 40 clients at once
    d = daemon(overrides=["engine.max_running=2", "engine.max_queued=2", "engine.kv_blocks=16",
                          "engine.token_budget=64", "engine.prefill_chunk=64"])
    jobs = [("udp", "tcp")[i % 2] for i in range(40)]
    with cf.ThreadPoolExecutor(40) as ex:
        res = list(ex.map(lambda t: cli_generate(cli, d, t, PROMPTS[1], 64, timeout=120), jobs))
    codes = [r.returncode for r in res]
    assert set(codes) <= {0, 4}, [(r.returncode, r.stderr) for r in res if r.returncode not in (0, 4)]
    assert codes.count(4) > 0 and codes.count(0) >= 4, codes
    assert all("BUSY" in r.stderr or "busy" in r.stderr for r in res if r.returncode == 4)
    assert d.alive()
    want = offline(tool, small_model, PROMPTS[1], 64)
    assert all(r.stdout == want for r in res if r.returncode == 0)
    m = d.metrics()
    assert m['sluice_requests_total{outcome="busy"}'] == codes.count(4)
    r = cli_generate(cli, d, "tcp", PROMPTS[1], 64)
    assert r.returncode == 0 and r.stdout == want
    d.wait_metric("sluice_kv_blocks_used", lambda v: v == 0, 5)


# ---- bad input ----

def test_bad_input_keeps_serving(daemon, cli, tool, small_model):
    import random
    rng = random.Random(1234)
    d = daemon(overrides=["limits.max_prompt_tokens=32"])
    good = frame(OP["GENERATE"], 11, generate_payload(b"Hello", max_tokens=4))
    # UDP: random and mutated datagrams, bad CRC (dropped), wrong version (answered)
    u = UdpConn(d.udp, timeout=0.3)
    for i in range(300):
        if i % 3 == 0:
            b = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 1400)))
        else:
            b = bytearray(good)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.getrandbits(8)
        u.send(bytes(b))
    bad_crc = bytearray(good)
    bad_crc[28] ^= 0xFF
    u.send(bytes(bad_crc))
    u.send(frame(OP["PING"], 0, b"\0" * 32, version=9))
    seen = []
    try:
        while True:
            seen.append(u.recv_frame())
    except socket.timeout:
        pass
    errs = [parse_error(p) for op, fl, rid, seq, p in seen if op == OP["ERROR"]]
    assert any(e["code"] == ERR["BAD_VERSION"] for e in errs), errs
    # prompt over the limit, bad sampling: terminal errors
    u.s.settimeout(5)
    u.send(frame(OP["GENERATE"], 21, generate_payload(b"word " * 200, max_tokens=4)))
    u.send(frame(OP["GENERATE"], 22, generate_payload(b"Hello", max_tokens=4, top_p=-1.0)))
    u.send(frame(OP["GENERATE"], 23, generate_payload(ids=[1, 99999999], max_tokens=4)))
    want = {21: ERR["PROMPT_TOO_LONG"], 22: ERR["BAD_PARAM"], 23: ERR["BAD_PARAM"]}
    got = {}
    end = time.monotonic() + 5
    while len(got) < 3 and time.monotonic() < end:
        op, fl, rid, seq, p = u.recv_frame()
        if op == OP["ERROR"] and rid in want:
            got[rid] = parse_error(p)
    assert {k: v["code"] for k, v in got.items()} == want, got
    assert all(v["terminal"] for v in got.values())
    assert "32" in got[21]["msg"], got[21]
    # TCP: random bytes close that connection; oversize frame: TOO_LARGE then close
    for payload in (bytes(rng.getrandbits(8) for _ in range(200)),
                    frame(OP["GENERATE"], 3, b"", crc=False, payload_len=1 << 20)):
        c = TcpConn(d.tcp, timeout=5)
        c.send(payload)
        try:
            f = c.recv_frame()
        except ConnectionResetError:
            f = None
        if f is not None and f[0] == OP["ERROR"]:
            assert parse_error(f[4])["code"] in (ERR["BAD_FRAME"], ERR["TOO_LARGE"], ERR["BAD_VERSION"])
        c.close()
    # a mutated-frame storm over TCP, one connection per frame (a mutated length leaves the
    # server waiting for bytes that never come: wait briefly, then hang up)
    for i in range(50):
        b = bytearray(frame(OP["GENERATE"], 11, generate_payload(b"Hello", max_tokens=4), crc=False))
        b[rng.randrange(len(b))] = rng.getrandbits(8)
        c = TcpConn(d.tcp, timeout=0.2)
        c.send(bytes(b))
        try:
            while c.recv_frame() is not None:
                pass
        except (socket.timeout, ConnectionResetError):
            pass
        c.close()
    # the CLI: prompt over the limit is a server error (exit 1) with the reason
    r = cli_generate(cli, d, "tcp", "word " * 200, 4)
    assert r.returncode == 1 and "PROMPT" in r.stderr.upper(), r.stderr
    assert d.alive()
    r = cli_generate(cli, d, "udp", PROMPTS[0], 8)
    assert r.returncode == 0 and r.stdout == offline(tool, small_model, PROMPTS[0], 8)
    m = d.metrics()
    assert m['sluice_transport_drops_total{transport="udp"}'] + m['sluice_transport_malformed_total{transport="udp"}'] > 0


# ---- lifecycle ----

class NotifyListener:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(str(path))
        self.s.settimeout(0.2)
        self.msgs = []
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop:
            try:
                m = self.s.recv(4096).decode()
                self.msgs.append((time.monotonic(), m))  # stamped on arrival, not before recv
            except socket.timeout:
                pass

    def wait_for(self, pred, timeout=10, after=0.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for t, m in list(self.msgs):
                if t >= after and pred(m):
                    return m
            time.sleep(0.05)
        other = [(round(t - after, 3), m) for t, m in self.msgs if m != "WATCHDOG=1"]
        raise AssertionError(f"no matching sd_notify message in {timeout} s: {other}")

    def close(self):
        self.stop = True
        self.t.join(2)
        self.s.close()


def test_sd_notify_reload_and_drain(daemon, cli, tool, small_model, tmp_path):
    sock = tmp_path / "notify.sock"
    n = NotifyListener(sock)
    try:
        d = daemon(env={"NOTIFY_SOCKET": str(sock), "WATCHDOG_USEC": "400000"})
        n.wait_for(lambda m: "READY=1" in m and "STATUS=serving" in m)
        assert any("STATUS=loading" in m for _, m in n.msgs), n.msgs
        n.wait_for(lambda m: "WATCHDOG=1" in m)
        t0 = time.monotonic()
        n.wait_for(lambda m: "WATCHDOG=1" in m, after=t0 + 0.1, timeout=3)  # keeps coming
        assert d.health() == (200, "ready")

        # SIGHUP with a live change
        conf = d.conf.read_text()
        d.conf.write_text(conf + "[limits]\nmax_new_tokens = 100\ndefault_max_tokens = 50\n")
        t1 = time.monotonic()
        d.signal(signal.SIGHUP)
        m = n.wait_for(lambda m: "RELOADING=1" in m, after=t1)
        assert "MONOTONIC_USEC=" in m, m
        n.wait_for(lambda m: "READY=1" in m, after=t1)
        r = cli_generate(cli, d, "tcp", PROMPTS[0], 200)
        assert r.returncode == 1 and "100" in r.stderr, r.stderr  # the new limit is in force
        for t in ("udp", "tcp"):  # and INFO says so
            r = run([cli, f"--{t}", "-H", "127.0.0.1", "-p", d.port(t), "info"], timeout=20)
            assert r.returncode == 0 and "max_new_tokens: 100\n" in r.stdout, r.stdout + r.stderr

        # SIGHUP with a bad config: rejected, old one stays, still serving
        d.conf.write_text(conf.replace("[model]", "[model]\nbogus_key = 1"))
        t2 = time.monotonic()
        d.signal(signal.SIGHUP)
        n.wait_for(lambda m: "READY=1" in m, after=t2)
        time.sleep(0.2)
        assert "reload rejected" in d.log()
        assert d.alive()
        r = cli_generate(cli, d, "udp", PROMPTS[0], 8)
        assert r.returncode == 0 and r.stdout == offline(tool, small_model, PROMPTS[0], 8)
        d.conf.write_text(conf)

        # SIGTERM drains an in-flight request: signalled once its first token has arrived, so
        # it is certainly running (the metrics gauges lag by up to 200 ms)
        want = offline(tool, small_model, PROMPTS[2], 100)
        c = TcpConn(d.tcp)
        c.send(frame(OP["GENERATE"], 55, generate_payload(PROMPTS[2].encode(), max_tokens=100), crc=False))
        op, fl, rid, seq, p = c.recv_frame()
        assert op == OP["TOKENS"] and rid == 55, (op, p)
        text = parse_tokens(p)[1]
        t3 = time.monotonic()
        d.signal(signal.SIGTERM)
        while True:
            op, fl, rid, seq, p = c.recv_frame()
            if op != OP["TOKENS"]:
                break
            text += parse_tokens(p)[1]
        assert op == OP["DONE"], (op, p)
        done = parse_done(p)
        assert done["reason"] == 2 and done["generated_tokens"] == 100, done  # length
        assert text.decode() == want.removesuffix("\n")  # sluice-run ends its output with a newline
        n.wait_for(lambda m: "STOPPING=1" in m, after=t3)
        c.close()
        assert d.p.wait(20) == 0
        assert "draining 1 in-flight" in d.log()
    finally:
        n.close()


def test_shutting_down_refuses_new_requests(daemon, cli):
    d = daemon(overrides=["limits.max_new_tokens=4000", "engine.threads=1", "server.drain_timeout_ms=3000"])
    c = TcpConn(d.tcp)
    c.send(frame(OP["GENERATE"], 1, generate_payload(b"Once upon a time", max_tokens=4000), crc=False))
    assert c.recv_frame()[0] == OP["TOKENS"]
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert d.health()[1] == "draining"
    r = cli_generate(cli, d, "udp", PROMPTS[0], 4)
    assert r.returncode == 4, r.stderr  # SHUTTING_DOWN counts as busy
    # the long request is cancelled at the drain timeout: DONE cancelled
    while True:
        op, fl, rid, seq, p = c.recv_frame()
        if op != OP["TOKENS"]:
            break
    assert op == OP["DONE"] and parse_done(p)["reason"] == 4
    assert d.p.wait(20) == 0


# ---- configuration ----

def test_check_config(sluiced, small_model, tmp_path):
    good = tmp_path / "good.conf"
    good.write_text(f"[model]\npath = {small_model}\n[auth]\nmode = off\n")
    r = run([sluiced, "--check-config", "-c", good], timeout=10)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text(f"[model]\npath = {small_model}\n[limits]\nmax_new_tokens = abc\n")
    r = run([sluiced, "--check-config", "-c", bad], timeout=10)
    assert r.returncode == 1
    assert "bad.conf:4" in r.stderr and "max_new_tokens" in r.stderr, r.stderr
    r = run([sluiced, "--check-config", "-c", good, "-o", "limits.max_new_tokens=0"], timeout=10)
    assert r.returncode == 1 and "command line" in r.stderr, r.stderr
    r = run([sluiced, "--check-config", "-c", tmp_path / "missing.conf"], timeout=10)
    assert r.returncode == 1 and "missing.conf" in r.stderr


def test_backend_cuda_fails_clearly(daemon):
    """backend = cuda where it cannot be met (no CUDA in the build, no GPU, or a quantized
    model: CI has nvcc but no GPU) fails the start with the reason, never falls back."""
    d = daemon(overrides=["engine.backend=cuda"], ready=False)
    # 78 (EX_CONFIG) where the config check refuses the key, 1 where the start fails
    assert d.p.wait(30) in (1, 78)
    log = d.log()
    # without CUDA in the build the config check refuses the key first (control/config.c)
    assert ("backend = cuda" in log and "not built with CUDA" in log) or \
        "[engine] backend: cuda: this sluiced is built without CUDA" in log or \
        re.search(r"backend cuda: (no usable GPU|no GPU|GPU \d|.*the CUDA backend takes)", log), log


# ---- audit log ----

AUDIT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z client=(?P<client>\S+) transport=(?P<transport>udp|tcp) "
                        r"id=(?P<id>[0-9a-f]{16}) prompt_tokens=(?P<prompt>\d+) generated_tokens=(?P<gen>\d+) "
                        r"outcome=(?P<outcome>\S+) ttft_ms=[\d.]+ latency_ms=[\d.]+$")


def next_audit_line(path, seen, timeout=10):
    """The audit line after the first `seen` ones: the engine writes it just after DONE."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > seen:
            assert len(lines) == seen + 1, lines
            m = AUDIT_LINE.match(lines[-1])
            assert m, lines[-1]
            return m.groupdict()
        time.sleep(0.02)
    raise AssertionError(f"no audit line {seen + 1} in {timeout} s")


def raw_request(transport, family, port, rid, payload):
    """One GENERATE over a plain socket: (the client's address as the server sees it, the
    last frame: op and payload)."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    s = socket.socket(family, socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect((host, port))
    name = s.getsockname()
    addr = f"{name[0]}:{name[1]}" if family == socket.AF_INET else f"[{name[0]}]:{name[1]}"
    req = frame(OP["GENERATE"], rid, payload, crc=transport == "udp")
    s.sendall(req)
    buf = b""
    try:
        while True:
            if transport == "udp":
                op, fl, r, seq, p = parse(s.recv(65536))
                if op == OP["COOKIE"]:  # the server asks for proof of the address first
                    s.sendall(with_cookie(req, p[8:40]))
                    continue
            else:
                while len(buf) < 32 or len(buf) < 32 + struct.unpack_from("<I", buf, 20)[0]:
                    d = s.recv(65536)
                    assert d, "connection closed"
                    buf += d
                n = 32 + struct.unpack_from("<I", buf, 20)[0]
                (op, fl, r, seq, p), buf = parse(buf[:n]), buf[n:]
            assert r == rid
            if op in (OP["DONE"], OP["ERROR"]):
                return addr, op, p
    finally:
        s.close()


def test_audit_log_names_the_client(daemon, cli, small_model, tmp_path):
    audit = tmp_path / "audit.log"
    conf = (f"[model]\npath = {small_model}\n[dataplane]\nudp_listen = 127.0.0.1:0, [::1]:0\n"
            "tcp_listen = 127.0.0.1:0, [::1]:0\n[metrics]\nhttp_listen = 127.0.0.1:0\n"
            "[engine]\nthreads = 2\nkv_blocks = 512\nmax_running = 16\nmax_queued = 64\n"
            f"[log]\ntarget = stderr\naudit = on\naudit_path = {audit}\n[auth]\nmode = off\n")
    d = daemon(config_text=conf)
    v6 = {}
    for t in ("udp", "tcp"):
        m = re.search(rf"{t} \[::1\]:(\d+)", d.log())
        if m:
            v6[t] = int(m.group(1))
    seen, ids = 0, set()

    # the sluice CLI over each transport (and over ::1 when the host has it): the line names
    # a loopback client on an ephemeral port, with the token counts and finish the CLI got
    for t in ("udp", "tcp"):
        for host, port in [("127.0.0.1", d.port(t))] + ([("::1", v6[t])] if t in v6 else []):
            r = run([cli, f"--{t}", "-H", host, "-p", port, "--timeout", 30000, "generate", "-n", 8, "--temp", 0,
                     PROMPTS[1]], timeout=60)
            assert r.returncode == 0, r.stderr
            m = re.search(r"finish (\w+), prompt (\d+) tokens, generated (\d+) tokens", r.stderr)
            assert m, r.stderr
            a = next_audit_line(audit, seen)
            seen += 1
            chost, cport = a["client"].rsplit(":", 1)
            assert chost == (host if host[0] != ":" else f"[{host}]"), a
            assert 1024 <= int(cport) <= 65535 and int(cport) != port, a
            assert a["transport"] == t and a["outcome"] == m.group(1) == "length", a
            assert int(a["prompt"]) == int(m.group(2)) and int(a["gen"]) == int(m.group(3)) == 8, a
            assert a["id"] not in ids, a
            ids.add(a["id"])

    # plain sockets, where the test knows the client's port and the request id exactly;
    # a rejected request (max_tokens over the limit) is audited with its client too
    fams = [(socket.AF_INET, lambda t: d.port(t))] + ([(socket.AF_INET6, lambda t: v6[t])] if len(v6) == 2 else [])
    rid = 0x5100000000000001
    for t in ("udp", "tcp"):
        for fam, port in fams:
            addr, op, p = raw_request(t, fam, port(t), rid, generate_payload(b"Hello world", max_tokens=5))
            assert op == OP["DONE"], parse_error(p)
            done = parse_done(p)
            a = next_audit_line(audit, seen)
            seen += 1
            assert a == dict(client=addr, transport=t, id=f"{rid:016x}", prompt=str(done["prompt_tokens"]),
                             gen="5", outcome="length"), a
            rid += 1
            addr, op, p = raw_request(t, fam, port(t), rid, generate_payload(b"Hello", max_tokens=4000))
            assert op == OP["ERROR"] and parse_error(p)["code"] == ERR["BAD_PARAM"]
            a = next_audit_line(audit, seen)
            seen += 1
            assert a == dict(client=addr, transport=t, id=f"{rid:016x}", prompt="0", gen="0",
                             outcome="error:BAD_PARAM"), a
            rid += 1
