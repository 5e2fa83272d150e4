"""Access control and per-client limits (issue 7 item 3, docs/security.md): the real sluiced.

Checked: a source outside [dataplane] udp_allow / tcp_allow is dropped and counted (UDP) or
closed at accept and counted (TCP), while an allowed one is served; each per-client limit —
concurrent requests, requests per second, generated tokens per second — answers a request
over it with a terminal ERROR RATE_LIMITED whose retry_after_ms, once waited, lets the next
one through; per-key limits from the keys file override the config's; every refusal shows in
/metrics by limit and transport."""
import socket
import time

import pytest

from conftest import run
from sluiced_helper import ERR, OP, TcpConn, UdpConn, frame, generate_payload, parse_error, hello_frame
from test_security import K1, K2, signed, write_keys
from test_sluiced import cli, cli_generate, daemon, sluiced, small_model  # noqa: F401 (fixtures)


def gen(rid, n=2, prompt=b"Once upon a time"):
    return frame(OP["GENERATE"], rid, generate_payload(prompt, max_tokens=n), crc=False)


def outcomes(c, rids):
    """Reads frames until each of rids has ended: {rid: ("done", tokens) or ("error", error)}."""
    toks, res = {r: 0 for r in rids}, {}
    while len(res) < len(rids):
        f = c.recv_frame()
        assert f is not None, "connection closed"
        op, _, r, _, p = f
        if r not in toks or r in res:
            continue
        if op == OP["TOKENS"]:
            toks[r] += 1
        elif op == OP["DONE"]:
            res[r] = ("done", toks[r])
        elif op == OP["ERROR"] and parse_error(p)["terminal"]:
            res[r] = ("error", parse_error(p))
    return res


def outcome(c, rid):
    return outcomes(c, (rid,))[rid]


def limited(m, limit, transport="tcp"):
    return m.get(f'sluice_rate_limited_total{{limit="{limit}",transport="{transport}"}}', 0)


# ---- allowed networks ----

def test_cidr_denied_udp_dropped_tcp_closed(daemon):
    d = daemon(overrides=["dataplane.udp_allow=10.0.0.0/8, 2001:db8::/32", "dataplane.tcp_allow=192.0.2.0/24"])
    u = UdpConn(d.udp, timeout=0.5, cookie=False)
    for _ in range(3):
        u.s.sendto(hello_frame(1), u.addr)
    with pytest.raises(socket.timeout):
        u.recv_frame()
    c = socket.create_connection(("127.0.0.1", d.tcp), timeout=5)
    c.sendall(gen(1))
    try:
        assert c.recv(100) == b""  # closed without a word
    except ConnectionResetError:
        pass
    c.close()
    d.wait_metric('sluice_denied_total{transport="udp"}', lambda v: v >= 3)
    d.wait_metric('sluice_denied_total{transport="tcp"}', lambda v: v >= 1)


def test_cidr_allowed_served(daemon, cli):
    d = daemon(overrides=["dataplane.udp_allow=10.0.0.0/8, 127.0.0.0/8, ::1",
                          "dataplane.tcp_allow=127.0.0.1/32"])
    for tr in ("udp", "tcp"):
        r = cli_generate(cli, d, tr, "Once upon a time", 4)
        assert r.returncode == 0 and r.stdout.strip(), (tr, r.stderr)
    assert d.metrics()['sluice_denied_total{transport="udp"}'] == 0


def test_cidr_bad_lists_refused_with_reason(sluiced, small_model, tmp_path):
    conf = tmp_path / "c.conf"
    for value, why in (("10.0.0.1/8", "bits set past the prefix"), ("10.0.0.0/33", "prefix length must be 0..32"),
                       ("nonsense", "not an IPv4 or IPv6 address"), ("::1/129", "0..128")):
        conf.write_text(f"[model]\npath = {small_model}\n[auth]\nmode = off\n[dataplane]\nudp_allow = {value}\n")
        r = run([sluiced, "-c", conf, "--check-config"], timeout=30)
        assert r.returncode == 1 and "udp_allow" in r.stderr and why in r.stderr, (value, r.stderr)


# ---- per-client limits ----

def test_rps_limit_trips_and_recovers(daemon):
    d = daemon(overrides=["limits.rps_per_client=2"])
    c = TcpConn(d.tcp)
    for rid in (1, 2, 3):
        c.send(gen(rid))
    res = outcomes(c, (1, 2, 3))
    assert res[1][0] == "done" and res[2][0] == "done", res
    kind, e = res[3]
    assert kind == "error" and e["code"] == ERR["RATE_LIMITED"] and e["detail"] == 2, res
    assert 0 < e["retry"] <= 1000 and "rps" in e["msg"], e
    time.sleep(e["retry"] / 1000)
    c.send(gen(4))
    assert outcome(c, 4)[0] == "done"
    d.wait_metric('sluice_rate_limited_total{limit="rps",transport="tcp"}', lambda v: v == 1)
    d.wait_metric('sluice_requests_total{outcome="rate_limited"}', lambda v: v == 1)
    assert d.metrics()["sluice_clients_tracked"] >= 1


def test_tps_limit_trips_and_recovers(daemon):
    d = daemon(overrides=["limits.tps_per_client=10"])
    c = TcpConn(d.tcp)
    c.send(gen(1, n=30))  # a full bucket of 10, then 20 tokens of debt
    assert outcome(c, 1) == ("done", 30)
    c.send(gen(2))
    kind, e = outcome(c, 2)
    assert kind == "error" and e["code"] == ERR["RATE_LIMITED"] and e["detail"] == 10 and "tps" in e["msg"], e
    assert 1000 <= e["retry"] <= 2200, e  # ~21 tokens at 10/s, less the time the stream took
    time.sleep(e["retry"] / 1000)
    c.send(gen(3))
    assert outcome(c, 3)[0] == "done"
    d.wait_metric('sluice_rate_limited_total{limit="tps",transport="tcp"}', lambda v: v == 1)


def test_concurrency_limit_trips_and_recovers(daemon):
    d = daemon(overrides=["limits.max_concurrent_per_client=1", "limits.max_new_tokens=4000", "engine.threads=1"])
    c = TcpConn(d.tcp)
    c.send(gen(1, n=300))
    c.send(gen(2))
    # a second connection from the same address is the same client
    c2 = TcpConn(d.tcp)
    c2.send(gen(3))
    assert outcome(c2, 3)[0] == "error"
    res = outcomes(c, (1, 2))  # 2 answered while 1 was still streaming
    kind, e = res[2]
    assert kind == "error" and e["code"] == ERR["RATE_LIMITED"] and e["detail"] == 1, e
    assert e["retry"] > 0 and "concurrency" in e["msg"], e
    assert res[1][0] == "done"
    c.send(gen(4))
    assert outcome(c, 4)[0] == "done"
    d.wait_metric('sluice_rate_limited_total{limit="concurrency",transport="tcp"}', lambda v: v == 2)


def test_udp_limit_counts_per_address(daemon):
    d = daemon(overrides=["limits.rps_per_client=1"])
    u1, u2 = UdpConn(d.udp), UdpConn(d.udp)  # two ports, one address: one client
    u1.send(frame(OP["GENERATE"], 1, generate_payload(b"Once upon a time", max_tokens=2)))
    u2.send(frame(OP["GENERATE"], 2, generate_payload(b"Once upon a time", max_tokens=2)))
    errs = []
    for u, rid in ((u1, 1), (u2, 2)):
        while True:
            op, _, r, _, p = u.recv_frame()
            if op == OP["DONE"]:
                break
            if op == OP["ERROR"] and parse_error(p)["terminal"]:
                errs.append(parse_error(p))
                break
    assert len(errs) == 1 and errs[0]["code"] == ERR["RATE_LIMITED"], errs
    d.wait_metric('sluice_rate_limited_total{limit="rps",transport="udp"}', lambda v: v == 1)


def test_per_key_limits_override(daemon, tmp_path):
    keys = tmp_path / "server.keys"
    keys.write_text(f"1 {K1.hex()} rps=1\n2 {K2.hex()}\n")
    keys.chmod(0o600)
    d = daemon(("auth.mode=required", f"auth.keys_file={keys}", "limits.rps_per_client=50"))
    c = TcpConn(d.tcp)

    def burst(key_id, secret, rids):
        for rid in rids:
            c.send(signed(OP["GENERATE"], rid, generate_payload(b"Once upon a time", max_tokens=2), key_id, secret))
        return outcomes(c, rids)

    r1 = burst(1, K1, (11, 12, 13))  # key 1: 1 request/s
    assert r1[11][0] == "done" and all(r1[i][0] == "error" and r1[i][1]["code"] == ERR["RATE_LIMITED"]
                                       and r1[i][1]["detail"] == 1 and "per key" in r1[i][1]["msg"]
                                       for i in (12, 13)), r1
    r2 = burst(2, K2, (21, 22, 23))  # key 2: the config's 50/s, same connection and address
    assert all(v[0] == "done" for v in r2.values()), r2
    time.sleep(r1[12][1]["retry"] / 1000)
    assert burst(1, K1, (14,))[14][0] == "done"
