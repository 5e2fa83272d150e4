"""Client authentication end to end (issue 7, docs/security.md): the real sluiced with
[auth] mode = required and a keys file, the real `sluice` CLI with --key-file, and raw frames
signed here with Python's own HMAC-SHA256 (an implementation independent of the server's).

Checked: signed requests are served over UDP and TCP; an unsigned, unknown-key, wrong-secret,
replayed or out-of-window frame is refused — with ERROR UNAUTHENTICATED on TCP, dropped and
counted on UDP (nothing goes back); keys rotate with SIGHUP while a TCP connection that uses
a key still present keeps working; a key file that others can read, a missing one, or
mode = required without keys stop the start (and --check-config) with the reason; a broken
keys file at reload leaves the old keys in force; mode = off logs a warning."""
import hashlib
import hmac
import os
import signal
import socket
import struct
import time

import pytest

from conftest import run
from sluiced_helper import ERR, OP, TcpConn, frame, parse, parse_error, crc32c
from test_sluiced import cli, cli_generate, daemon, sluiced, small_model  # noqa: F401 (fixtures)

F_CRC, F_AUTH = 1, 4
ERR_UNAUTHENTICATED = 13
EXIT_AUTH, EXIT_UNREACHABLE, EXIT_USAGE = 5, 3, 2
K1 = bytes(range(32))
K2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")
K3 = hashlib.sha256(b"three").digest()


def keys_text(*keys):
    return "".join(f"{i} {s.hex()}\n" for i, s in keys)


def write_keys(path, *keys, mode=0o600):
    path.write_text("# test keys\n" + keys_text(*keys))
    os.chmod(path, mode)
    return path


def signed(op, rid, payload, key_id, secret, ts_ms=None, nonce=None):
    """A frame with CRC and the auth trailer, its MAC computed with Python's hmac."""
    ts_ms = int(time.time() * 1000) if ts_ms is None else ts_ms
    nonce = int.from_bytes(os.urandom(8), "little") if nonce is None else nonce
    fl = F_CRC | F_AUTH
    h = struct.pack("<IBBHQIIHH", 0x43554C53, 1, op, fl, rid, 0, len(payload), 0, 1)
    trailer = struct.pack("<IIQQ", key_id, 0, ts_ms, nonce)
    mac = hmac.new(secret, h + b"\0\0\0\0" + payload + trailer, hashlib.sha256).digest()
    body = payload + trailer + mac
    return h + struct.pack("<I", crc32c(body, crc32c(h))) + body


def ping(rid):
    return struct.pack("<Q", rid) + bytes(24)


def tcp_exchange(conn, data):
    conn.send(data)
    return conn.recv_frame()


def auth_daemon(daemon, keys, extra=()):
    return daemon(("auth.mode=required", f"auth.keys_file={keys}") + tuple(extra))


def test_signed_requests_served_unsigned_refused(daemon, cli, tmp_path):
    keys = write_keys(tmp_path / "server.keys", (1, K1), (2, K2))
    d = auth_daemon(daemon, keys)
    assert "authentication required: 2 client key(s)" in d.log()
    mine = write_keys(tmp_path / "client.keys", (2, K2))
    for tr in ("udp", "tcp"):
        r = cli_generate(cli, d, tr, "Once upon a time", 8, extra=("--key-file", str(mine)))
        assert r.returncode == 0 and r.stdout.strip(), (tr, r.stderr)
    r = run([cli, "--tcp", "-H", "127.0.0.1", "-p", d.tcp, "--key-file", mine, "info"], timeout=30)
    assert r.returncode == 0 and "auth" in r.stdout.lower(), r.stdout

    # unsigned: TCP gets the reason, UDP gets nothing and the server counts it
    r = cli_generate(cli, d, "tcp", "Once upon a time", 8)
    assert r.returncode == EXIT_AUTH and "no authentication trailer" in r.stderr, r.stderr
    r = run([cli, "--udp", "-H", "127.0.0.1", "-p", d.udp, "--timeout", 1500, "ping"], timeout=30)
    assert r.returncode == EXIT_UNREACHABLE, r.stderr
    d.wait_metric('sluice_auth_frames_total{transport="udp",result="no_trailer"}', lambda v: v >= 1)

    # a secret that is not the server's, and an id it does not know
    wrong = write_keys(tmp_path / "wrong.keys", (2, K1))
    r = cli_generate(cli, d, "tcp", "Once upon a time", 8, extra=("--key-file", str(wrong)))
    assert r.returncode == EXIT_AUTH and "bad MAC" in r.stderr, r.stderr
    unknown = write_keys(tmp_path / "unknown.keys", (9, K1))
    r = cli_generate(cli, d, "tcp", "Once upon a time", 8, extra=("--key-file", str(unknown)))
    assert r.returncode == EXIT_AUTH and "unknown key id 9" in r.stderr, r.stderr
    r = run([cli, "--udp", "-H", "127.0.0.1", "-p", d.udp, "--timeout", 1500, "--key-file", wrong, "ping"],
            timeout=30)
    assert r.returncode == EXIT_UNREACHABLE, r.stderr
    d.wait_metric('sluice_auth_frames_total{transport="udp",result="bad_mac"}', lambda v: v >= 1)
    # the client refuses a key file others can read
    os.chmod(wrong, 0o644)
    r = run([cli, "--tcp", "-H", "127.0.0.1", "-p", d.tcp, "--key-file", wrong, "ping"], timeout=30)
    assert r.returncode == EXIT_USAGE and "chmod 600" in r.stderr, r.stderr


def test_replay_and_window(daemon, tmp_path):
    keys = write_keys(tmp_path / "server.keys", (1, K1))
    d = auth_daemon(daemon, keys, ("auth.replay_window_ms=10000",))
    c = TcpConn(d.tcp)
    try:
        f = signed(OP["PING"], 5, ping(5), 1, K1, nonce=77)
        op, _, rid, _, _ = tcp_exchange(c, f)
        assert op == OP["PONG"] and rid == 5
        op, _, rid, _, p = tcp_exchange(c, f)  # the same bytes again
        e = parse_error(p)
        assert op == OP["ERROR"] and e["code"] == ERR_UNAUTHENTICATED and "replayed" in e["msg"], e
        for skew in (-11000, 11000):  # outside ±10 s
            op, _, _, _, p = tcp_exchange(c, signed(OP["PING"], 6, ping(6), 1, K1,
                                                    ts_ms=int(time.time() * 1000) + skew))
            e = parse_error(p)
            assert op == OP["ERROR"] and e["code"] == ERR_UNAUTHENTICATED and "window" in e["msg"], e
        # a byte changed after signing (CRC made right again): bad MAC
        g = bytearray(signed(OP["PING"], 7, ping(7), 1, K1))
        g[40] ^= 1
        g[28:32] = struct.pack("<I", crc32c(bytes(g[32:]), crc32c(bytes(g[:28]))))
        op, _, _, _, p = tcp_exchange(c, bytes(g))
        assert op == OP["ERROR"] and "bad MAC" in parse_error(p)["msg"]
        # the connection survived all of it
        op, _, rid, _, _ = tcp_exchange(c, signed(OP["PING"], 8, ping(8), 1, K1))
        assert op == OP["PONG"] and rid == 8
    finally:
        c.close()
    # UDP: a replayed datagram gets no second answer
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1.0)
    try:
        f = signed(OP["PING"], 9, ping(9), 1, K1)
        u.sendto(f, ("127.0.0.1", d.udp))
        assert parse(u.recvfrom(65536)[0])[0] == OP["PONG"]
        u.sendto(f, ("127.0.0.1", d.udp))
        with pytest.raises(socket.timeout):
            u.recvfrom(65536)
        d.wait_metric('sluice_auth_frames_total{transport="udp",result="replayed"}', lambda v: v >= 1)
    finally:
        u.close()


def test_key_rotation_keeps_connections(daemon, cli, tmp_path):
    keys = write_keys(tmp_path / "server.keys", (1, K1), (2, K2))
    d = auth_daemon(daemon, keys)
    c = TcpConn(d.tcp)
    try:
        assert tcp_exchange(c, signed(OP["PING"], 1, ping(1), 2, K2))[0] == OP["PONG"]
        write_keys(keys, (2, K2), (3, K3))  # 1 removed, 3 added
        d.signal(signal.SIGHUP)
        end = time.monotonic() + 10
        while "authentication: 2 key(s) in force" not in d.log():
            assert time.monotonic() < end, d.log()
            time.sleep(0.05)
        assert tcp_exchange(c, signed(OP["PING"], 2, ping(2), 2, K2))[0] == OP["PONG"]  # same connection
        op, _, _, _, p = tcp_exchange(c, signed(OP["PING"], 3, ping(3), 1, K1))
        assert op == OP["ERROR"] and "unknown key id 1" in parse_error(p)["msg"]
        assert tcp_exchange(c, signed(OP["PING"], 4, ping(4), 3, K3))[0] == OP["PONG"]
    finally:
        c.close()
    k3 = write_keys(tmp_path / "k3.keys", (3, K3))
    r = cli_generate(cli, d, "udp", "Hello, my name is", 8, extra=("--key-file", str(k3)))
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    # a keys file broken at reload: rejected, the keys in force stay
    keys.write_text("3 " + "zz" * 16 + "\n")
    d.signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while "reload rejected, the old configuration and keys stay" not in d.log():
        assert time.monotonic() < end, d.log()
        time.sleep(0.05)
    assert "not hexadecimal" in d.log()
    r = cli_generate(cli, d, "tcp", "Hello, my name is", 4, extra=("--key-file", str(k3)))
    assert r.returncode == 0, r.stderr


def test_start_refused_with_reason(daemon, sluiced, small_model, tmp_path):
    keys = write_keys(tmp_path / "open.keys", (1, K1), mode=0o644)
    conf = tmp_path / "c.conf"
    base = (f"[model]\npath = {small_model}\n[dataplane]\nudp_listen = 127.0.0.1:0\n"
            "[metrics]\nhttp_listen = off\n[log]\ntarget = stderr\n")
    cases = [
        ("", "mode = required needs the clients' keys file (or mode = off"),  # the default
        ("[auth]\nmode = required\n", "mode = required needs the clients' keys file"),
        (f"[auth]\nmode = required\nkeys_file = {keys}\n", "chmod 600"),
        (f"[auth]\nmode = required\nkeys_file = {tmp_path}/none.keys\n", "No such file"),
    ]
    for extra, want in cases:
        conf.write_text(base + extra)
        r = run([sluiced, "-c", conf, "--check-config"], timeout=30)
        assert r.returncode == 1 and want in r.stderr, (extra, r.stderr)
        d = daemon(config_text=base + extra, ready=False)
        assert d.p.wait(30) != 0
        assert want in d.log(), d.log()
    # credentials from systemd: a relative keys_file is looked up in $CREDENTIALS_DIRECTORY
    cred = tmp_path / "cred"
    cred.mkdir()
    write_keys(cred / "sluice-keys", (1, K1), mode=0o400)
    d = daemon(config_text=base + "[auth]\nmode = required\nkeys_file = sluice-keys\n",
               env={"CREDENTIALS_DIRECTORY": str(cred)})
    assert "authentication required: 1 client key(s)" in d.log()


def test_auth_off_warns(daemon):
    d = daemon()
    assert "authentication is off" in d.log()
