"""No amplification over UDP (issue 7 item 2, docs/protocol.md §7.2, docs/security.md): the
real sluiced with cookies on (the default when [auth] mode = off).

Checked: a sender in a network namespace that forges the source address of a "victim"
namespace gets the victim nothing but the cookie exchange — every reply no larger than the
datagram it answers, no request run; the normal client flow (libsluice through `sluice`, and
raw frames) gets a cookie and is served; a cookie of another address or an expired one gets a
fresh COOKIE, not service; authenticated frames need no cookie; udp_cookies = off serves
without one."""
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import run
from sluiced_helper import OP, Daemon, UdpConn, frame, generate_payload, hello_frame, parse, with_cookie
from test_security import K1, signed, write_keys
from test_sluiced import cli, cli_generate, daemon, sluiced, small_model  # noqa: F401 (fixtures)

HERE = os.path.dirname(os.path.abspath(__file__))


def gen(rid, n=4):
    return frame(OP["GENERATE"], rid, generate_payload(b"Once upon a time", max_tokens=n))


def collect(u, quiet=1.0):
    """Every frame until quiet seconds pass with none."""
    out = []
    u.s.settimeout(quiet)
    while True:
        try:
            out.append(u.recv_frame())
        except socket.timeout:
            return out


def test_client_flow_gets_a_cookie_and_is_served(daemon, cli):
    d = daemon()
    r = run([cli, "--udp", "-H", "127.0.0.1", "-p", d.udp, "info"], timeout=30)
    assert r.returncode == 0 and "cookie_required: yes" in r.stdout, r.stdout + r.stderr
    r = cli_generate(cli, d, "udp", "Once upon a time", 8)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    m = d.wait_metric('sluice_udp_cookies_total{transport="udp",result="sent"}', lambda v: v >= 2)
    assert m >= 2
    assert d.metrics()['sluice_udp_cookies_total{transport="udp",result="missing"}'] == 0


def test_raw_frames_without_cookie_get_one_no_larger(daemon):
    d = daemon()
    u = UdpConn(d.udp, cookie=False)
    req = gen(41)
    u.send(req)
    got = collect(u, 0.5)
    assert [f[0] for f in got] == [OP["COOKIE"]] and got[0][2] == 41, got
    ck = got[0][4]
    assert 32 + len(ck) <= len(req)
    lifetime = struct.unpack_from("<I", ck)[0]
    assert 29000 <= lifetime <= 60000, lifetime
    # the same request with the cookie runs
    u.send(with_cookie(req, ck[8:40]))
    ops = [f[0] for f in collect(u, 1.0)]
    assert OP["TOKENS"] in ops and OP["DONE"] in ops, ops
    # HELLO: COOKIE then INFO, together no larger than the HELLO
    u.s.sendto(hello_frame(7), u.addr)
    sizes = []
    u.s.settimeout(1)
    for _ in range(2):
        data, _ = u.s.recvfrom(65536)
        sizes.append((parse(data)[0], len(data)))
    assert {s[0] for s in sizes} == {OP["COOKIE"], OP["INFO"]} and sum(s[1] for s in sizes) <= 1200, sizes
    # a forged cookie is not accepted; too small a frame for a COOKIE gets nothing
    u.send(with_cookie(gen(42), bytes(32)))
    assert [f[0] for f in collect(u, 0.5)] == [OP["COOKIE"]]
    u.send(frame(OP["CANCEL"], 43))
    assert collect(u, 0.5) == []
    m = d.wait_metric('sluice_udp_cookies_total{transport="udp",result="invalid"}', lambda v: v >= 1)
    assert m >= 1 and d.metrics()['sluice_udp_cookies_total{transport="udp",result="missing"}'] >= 2


def test_cookie_expires_and_client_refreshes(daemon, cli):
    d = daemon(overrides=["dataplane.udp_cookie_rotate_ms=1000"])
    u = UdpConn(d.udp)
    old = u.cookie
    time.sleep(2.2)  # two buckets on: no longer accepted
    u.send(gen(51))
    got = collect(u, 0.5)
    assert [f[0] for f in got] == [OP["COOKIE"]] and got[0][4][8:40] != old, got
    d.wait_metric('sluice_udp_cookies_total{transport="udp",result="invalid"}', lambda v: v >= 1)
    # libsluice asks again at half the lifetime: a stream that outlives several cookies ends well
    r = cli_generate(cli, d, "udp", "Once upon a time", 120, extra=("--timeout", 30000))
    assert r.returncode == 0 and r.stdout.strip(), r.stderr


def test_authenticated_frames_need_no_cookie(daemon, tmp_path):
    keys = write_keys(tmp_path / "server.keys", (1, K1))
    d = daemon(("auth.mode=required", f"auth.keys_file={keys}"))
    u = UdpConn(d.udp, cookie=False)
    u.send(signed(OP["GENERATE"], 61, generate_payload(b"Once upon a time", max_tokens=4), 1, K1))
    ops = [f[0] for f in collect(u, 1.0)]
    assert OP["TOKENS"] in ops and OP["DONE"] in ops and OP["COOKIE"] not in ops, ops


def test_cookies_off_serves_without(daemon):
    d = daemon(overrides=["dataplane.udp_cookies=off"])
    u = UdpConn(d.udp)
    assert u.cookie is None
    u.send(gen(71))
    ops = [f[0] for f in collect(u, 1.0)]
    assert OP["TOKENS"] in ops and OP["DONE"] in ops, ops


# ---- a spoofed source, from a network namespace ----

SRV_A, ATK, SRV_V, VIC = "10.77.0.1", "10.77.0.2", "10.78.0.1", "10.78.0.2"
VIC_PORT = 40000


def sh(*cmd, check=True):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(map(str, cmd))}: {r.stderr.strip()}")
    return r


@pytest.fixture
def two_namespaces():
    """atk (10.77.0.2) and vic (10.78.0.2), each on a veth to this namespace (.1)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, veth and raw sockets")
    if not shutil.which("ip"):
        pytest.skip("needs ip (Debian: iproute2)")
    tag = f"{os.getpid() % 100000}"
    names = [(f"slatk{tag}", f"sla{tag}", SRV_A, ATK), (f"slvic{tag}", f"slv{tag}", SRV_V, VIC)]
    made = []
    try:
        for ns, dev, host_ip, ns_ip in names:
            r = sh("ip", "netns", "add", ns, check=False)
            if r.returncode:
                pytest.skip(f"cannot create a network namespace here: {r.stderr.strip()}")
            made.append((ns, dev))
            sh("ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "addr", "add", f"{host_ip}/24", "dev", dev)
            sh("ip", "link", "set", dev, "up")
            # the forged datagrams come in on the attacker's link with the victim's source
            sh("sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0")
            sh("ip", "-n", ns, "addr", "add", f"{ns_ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", host_ip)
        yield names[0][0], names[1][0]
    finally:
        for ns, dev in made:
            sh("ip", "link", "del", dev, check=False)
            sh("ip", "netns", "del", ns, check=False)


VICTIM = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.2)
print("ready", flush=True)
end, got = time.monotonic() + float(sys.argv[2]), []
while time.monotonic() < end:
    try:
        d, a = s.recvfrom(65536)
        got.append([a[0], a[1], len(d), d[:48].hex()])
    except socket.timeout:
        pass
print(json.dumps(got), flush=True)
"""

SPOOFER = r"""
import json, socket, struct, sys
src, sport, dst, dport = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = []
for hx in json.loads(sys.stdin.read()):
    payload = bytes.fromhex(hx)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
    sent.append(len(payload))
print(json.dumps(sent), flush=True)
"""


def test_spoofed_source_gets_the_victim_nothing_larger(sluiced, small_model, tmp_path, two_namespaces):
    import json
    atk, vic = two_namespaces
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as p:
        p.bind(("0.0.0.0", 0))
        port = p.getsockname()[1]
    conf = (f"[model]\npath = {small_model}\n[dataplane]\nudp_listen = 0.0.0.0:{port}\n"
            "tcp_listen = 127.0.0.1:0\n[metrics]\nhttp_listen = 127.0.0.1:0\n"
            "[engine]\nthreads = 2\nkv_blocks = 512\nmax_running = 16\nmax_queued = 64\n"
            "[log]\ntarget = stderr\n[auth]\nmode = off\n")
    d = Daemon(sluiced, small_model, tmp_path, config_text=conf)
    try:
        t0 = time.monotonic()
        while "serving" not in d.log():
            assert d.p.poll() is None and time.monotonic() - t0 < 60, d.log()
            time.sleep(0.05)
        import re
        d.http = int(re.search(r"http 127\.0\.0\.1:(\d+)", d.log()).group(1))
        victim = subprocess.Popen(["ip", "netns", "exec", vic, sys.executable, "-c", VICTIM, str(VIC_PORT), "6"],
                                  stdout=subprocess.PIPE, text=True)
        assert victim.stdout.readline().strip() == "ready"
        # what an attacker would send for the largest answers: requests (a long stream each,
        # fragmented ones too), RESEND, PING, HELLO, a forged cookie, and junk
        big = generate_payload(b"x" * 3000, max_tokens=500)
        attack = [gen(1000 + i, 500) for i in range(20)]
        attack += [frame(OP["GENERATE"], 2000, big[i * 1300:(i + 1) * 1300], seq=i * 1300, frag_index=i,
                         frag_count=3) for i in range(3)]
        attack += [with_cookie(gen(3000 + i, 500), os.urandom(32)) for i in range(5)]
        attack += [frame(OP["RESEND"], 1000, struct.pack("<HHII", 1, 0, 0, 0))]
        attack += [frame(OP["PING"], 5, struct.pack("<Q", 5) + bytes(24)), hello_frame(6), b"\x00" * 64]
        spoof = subprocess.run(["ip", "netns", "exec", atk, sys.executable, "-c", SPOOFER, VIC, str(VIC_PORT),
                                SRV_A, str(port)], input=json.dumps([a.hex() for a in attack]),
                               capture_output=True, text=True, timeout=30)
        assert spoof.returncode == 0, spoof.stderr
        sent = json.loads(spoof.stdout)
        out, _ = victim.communicate(timeout=30)
        got = json.loads(out.strip().splitlines()[-1])
        m = d.metrics()
    finally:
        d.p.send_signal(2)
        d.p.wait(timeout=30)
    assert sum(sent) == sum(len(a) for a in attack)
    ops = [bytes.fromhex(g[3])[5] for g in got]
    # the victim got the cookie exchange and cut-down answers, never a stream
    assert OP["TOKENS"] not in ops and OP["DONE"] not in ops, ops
    assert set(ops) <= {OP["COOKIE"], OP["INFO"], OP["PONG"], OP["ERROR"]}, ops
    assert ops.count(OP["COOKIE"]) >= 20, ops
    recv_bytes = sum(g[2] for g in got)
    assert recv_bytes <= sum(sent), (recv_bytes, sum(sent))
    for g in got:  # each reply no larger than the smallest datagram that could have caused it
        assert g[2] <= 1200
        if bytes.fromhex(g[3])[5] == OP["COOKIE"]:
            assert g[2] <= min(len(a) for a in attack[:28])
    assert m.get('sluice_requests_total{outcome="eos"}', 0) == 0
    assert m.get('sluice_requests_total{outcome="length"}', 0) == 0
    assert m['sluice_udp_cookies_total{transport="udp",result="missing"}'] >= 20
    assert m['sluice_udp_cookies_total{transport="udp",result="invalid"}'] >= 5
    print(f"spoofed: {len(attack)} datagrams, {sum(sent)} bytes sent; victim got {len(got)} datagrams, "
          f"{recv_bytes} bytes (ratio {recv_bytes / sum(sent):.3f})")
