"""TLS 1.3 on the TCP transport end to end (issue 7, docs/security.md): certificates made here
with Debian's `openssl` CLI (a CA, a server certificate for localhost and 127.0.0.1, a second
CA that signed nothing of the server's, a client certificate), the real sluiced with
[dataplane] tls = on, the real `sluice` CLI with --tls, and `openssl s_client` as a client we
did not write.

Checked: greedy text over TLS equals plaintext TCP's; a certificate from an untrusted CA, or
for another name, is refused with exit code 5 and the reason, and counted by the server; a
plaintext client on the TLS port gets a plaintext ERROR saying so, and the server keeps
serving; a TLS 1.2 client is refused (s_client with TLS 1.3 is served); authentication keys
work over TLS; plaintext TCP on a non-loopback address is refused by the config check;
a missing or mismatched certificate or key stops the start with the reason; SIGHUP re-reads
the certificate; mutual TLS (tls_client_ca) refuses a client without a certificate."""
import os
import re
import shutil
import signal
import struct
import subprocess
import time

import pytest

from conftest import run
from sluiced_helper import ERR, OP, TcpConn, frame, parse_error
from test_security import write_keys, K1
from test_sluiced import cli, cli_generate, daemon, sluiced, small_model  # noqa: F401 (fixtures)

EXIT_SERVER, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 1, 2, 3, 5
PROMPT = "The capital of France is"
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed (apt install openssl)")


def ossl(*args, cwd):
    r = subprocess.run([OPENSSL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"openssl {' '.join(map(str, args))}: {r.stderr}"


def make_ca(d, name):
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         f"{name}.key", "-out", f"{name}.pem", "-days", 2, "-subj", f"/CN=sluice test {name}", cwd=d)


def make_cert(d, name, ca, san, usage="serverAuth"):
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
                                   f"keyUsage=digitalSignature\nextendedKeyUsage={usage}\n")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", f"{name}.key",
         "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    ossl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
         "-out", f"{name}.pem", "-days", 2, "-extfile", f"{name}.ext", cwd=d)
    os.chmod(d / f"{name}.key", 0o600)


@pytest.fixture
def pki(tmp_path):
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "other_ca")
    make_cert(d, "server", "ca", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "server2", "other_ca", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "client", "ca", "DNS:client1", usage="clientAuth")
    return d


def tls_overrides(pki, cert="server", extra=()):
    return ("dataplane.tls=on", f"dataplane.tls_cert={pki / (cert + '.pem')}",
            f"dataplane.tls_key={pki / (cert + '.key')}") + tuple(extra)


def tls_cli(cli, d, *args, ca=None, timeout=60):
    base = [cli, "--tls", "-H", "127.0.0.1", "-p", d.tcp, "--timeout", 30000]
    if ca is not None:
        base += ["--tls-ca", ca]
    return run(base + list(args), timeout=timeout)


def metric(d, result):
    return d.metrics().get(f'sluice_tls_handshakes_total{{transport="tcp",result="{result}"}}', 0)


def test_greedy_over_tls_equals_plaintext_tcp(daemon, cli, pki):
    plain = daemon()
    want = cli_generate(cli, plain, "tcp", PROMPT, 24)
    assert want.returncode == 0, want.stderr
    d = daemon(tls_overrides(pki))
    assert re.search(r"tcp 127\.0\.0\.1:\d+ \(tls\)", d.log()), d.log()
    r = tls_cli(cli, d, "generate", "-n", 24, "--temp", 0, PROMPT, ca=pki / "ca.pem")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want.stdout and "generated 24 tokens" in r.stderr, (r.stdout, want.stdout)
    # the name the certificate carries, given explicitly (SNI and the DNS name check)
    r = tls_cli(cli, d, "--tls-name", "localhost", "ping", ca=pki / "ca.pem")
    assert r.returncode == 0, r.stderr
    # $SLUICE_TLS_CA, and UDP stays plaintext beside it
    r = run([cli, "--tls", "-H", "127.0.0.1", "-p", d.tcp, "info"], timeout=30,
            env=dict(os.environ, SLUICE_TLS_CA=str(pki / "ca.pem")))
    assert r.returncode == 0 and "max_frame: 65536" in r.stdout, r.stderr
    assert cli_generate(cli, d, "udp", PROMPT, 24).stdout == want.stdout
    d.wait_metric('sluice_tls_handshakes_total{transport="tcp",result="ok"}', lambda v: v >= 3)
    assert metric(d, "failed") == 0


def test_bad_certificate_refused(daemon, cli, pki):
    d = daemon(tls_overrides(pki))
    # a CA that did not sign the server's certificate; the system's store (nor does it)
    for ca in (pki / "other_ca.pem", None):
        r = tls_cli(cli, d, "ping", ca=ca)
        assert r.returncode == EXIT_AUTH, r.stderr
        assert "certificate of 127.0.0.1" in r.stderr and "not accepted" in r.stderr, r.stderr
        assert "unable to get local issuer certificate" in r.stderr, r.stderr
    # the right CA, but a name the certificate does not carry
    r = tls_cli(cli, d, "--tls-name", "sluice.example", "ping", ca=pki / "ca.pem")
    assert r.returncode == EXIT_AUTH and "hostname mismatch" in r.stderr, r.stderr
    r = run([cli, "--tls", "-H", "localhost", "-4", "-p", d.tcp, "--tls-ca", pki / "ca.pem", "ping"], timeout=30)
    assert r.returncode == 0, r.stderr  # the DNS name it does carry
    # a CA file that is not there is a usage error, found before any connection
    r = tls_cli(cli, d, "ping", ca=pki / "missing.pem")
    assert r.returncode == EXIT_USAGE and "missing.pem" in r.stderr, r.stderr
    r = run([cli, "--tls", "--udp", "-p", d.tcp, "ping"], timeout=30)
    assert r.returncode == EXIT_USAGE and "--tls is for TCP" in r.stderr, r.stderr
    d.wait_metric('sluice_tls_handshakes_total{transport="tcp",result="failed"}', lambda v: v >= 3)
    r = tls_cli(cli, d, "ping", ca=pki / "ca.pem")
    assert r.returncode == 0, r.stderr


def test_plaintext_client_on_tls_port(daemon, cli, pki):
    d = daemon(tls_overrides(pki) + ("log.level=debug",))
    r = run([cli, "--tcp", "-H", "127.0.0.1", "-p", d.tcp, "--timeout", 5000, "ping"], timeout=30)
    assert r.returncode == EXIT_UNREACHABLE, r.stderr
    assert "this port speaks TLS 1.3 (sluice --tls)" in r.stderr, r.stderr
    # raw: a HELLO gets one plaintext ERROR (request id 0), then the close
    c = TcpConn(d.tcp)
    try:
        c.send(frame(OP["HELLO"], 1, struct.pack("<BBBB", 1, 0, 0, 0), crc=False))
        op, _, rid, _, p = c.recv_frame()
        e = parse_error(p)
        assert op == OP["ERROR"] and rid == 0 and e["code"] == ERR["BAD_FRAME"] and "TLS" in e["msg"], e
        assert c.recv_frame() is None
    finally:
        c.close()
    # garbage and a silent close in the middle of a handshake: no crash, counted
    c = TcpConn(d.tcp)
    c.send(b"\x16\x03\x01\x00\x05hello")
    c.close()
    d.wait_metric('sluice_tls_handshakes_total{transport="tcp",result="failed"}', lambda v: v >= 3)
    assert "TLS handshake with 127.0.0.1:" in d.log()  # debug level only
    r = tls_cli(cli, d, "generate", "-n", 4, "--temp", 0, PROMPT, ca=pki / "ca.pem")
    assert r.returncode == 0 and d.alive(), r.stderr
    # at the default level (info) a failed handshake is not logged
    d2 = daemon(tls_overrides(pki))
    run([cli, "--tcp", "-H", "127.0.0.1", "-p", d2.tcp, "--timeout", 5000, "ping"], timeout=30)
    d2.wait_metric('sluice_tls_handshakes_total{transport="tcp",result="failed"}', lambda v: v >= 1)
    assert "TLS handshake with" not in d2.log()


def s_client(port, *args, ca):
    return subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
                           "-verify_return_error", *args], input="", capture_output=True, text=True, timeout=30)


def test_tls12_refused_tls13_served(daemon, pki):
    d = daemon(tls_overrides(pki))
    r = s_client(d.tcp, "-tls1_2", ca=pki / "ca.pem")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "alert protocol version" in out, out
    r = s_client(d.tcp, "-tls1_3", ca=pki / "ca.pem")
    out = r.stdout + r.stderr
    assert "Protocol  : TLSv1.3" in out or "TLSv1.3" in out, out
    assert "Verify return code: 0 (ok)" in out, out
    assert d.alive()


def test_auth_over_tls(daemon, cli, pki, tmp_path):
    keys = write_keys(tmp_path / "server.keys", (1, K1))
    d = daemon(tls_overrides(pki, extra=("auth.mode=required", f"auth.keys_file={keys}")))
    mine = write_keys(tmp_path / "client.keys", (1, K1))
    r = tls_cli(cli, d, "--key-file", mine, "generate", "-n", 8, "--temp", 0, PROMPT, ca=pki / "ca.pem")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = tls_cli(cli, d, "generate", "-n", 8, "--temp", 0, PROMPT, ca=pki / "ca.pem")
    assert r.returncode == EXIT_AUTH and "no authentication trailer" in r.stderr, r.stderr


def test_config_checks(sluiced, small_model, pki, tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text(f"[model]\npath = {small_model}\n[auth]\nmode = off\n[dataplane]\ntcp_listen = 0.0.0.0:7400\n")
    r = run([sluiced, "--check-config", "-c", conf], timeout=30)
    assert r.returncode == 1 and "0.0.0.0:7400 is not a loopback address" in r.stderr, r.stderr
    ok = ["-o", "dataplane.tls=on", "-o", f"dataplane.tls_cert={pki / 'server.pem'}",
          "-o", f"dataplane.tls_key={pki / 'server.key'}"]
    r = run([sluiced, "--check-config", "-c", conf] + ok, timeout=30)
    assert r.returncode == 0, r.stderr
    # the files are read by --check-config too: missing, and a key of another certificate
    r = run([sluiced, "--check-config", "-c", conf] + ok[:4] + ["-o", f"dataplane.tls_key={pki / 'nope.key'}"],
            timeout=30)
    assert r.returncode == 1 and "[dataplane] tls: private key" in r.stderr and "nope.key" in r.stderr, r.stderr
    r = run([sluiced, "--check-config", "-c", conf] + ok[:4] + ["-o", f"dataplane.tls_key={pki / 'server2.key'}"],
            timeout=30)
    assert r.returncode == 1 and "does not belong to certificate" in r.stderr, r.stderr
    # a private key others may read is refused; one its group may read is not
    loose = tmp_path / "loose.key"
    shutil.copy(pki / "server.key", loose)
    loose.chmod(0o644)
    r = run([sluiced, "--check-config", "-c", conf] + ok[:4] + ["-o", f"dataplane.tls_key={loose}"], timeout=30)
    assert r.returncode == 1 and "others must have no access" in r.stderr and "loose.key" in r.stderr, r.stderr
    loose.chmod(0o640)
    r = run([sluiced, "--check-config", "-c", conf] + ok[:4] + ["-o", f"dataplane.tls_key={loose}"], timeout=30)
    assert r.returncode == 0, r.stderr
    # relative names are looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)
    r = run([sluiced, "--check-config", "-c", conf, "-o", "dataplane.tls=on", "-o", "dataplane.tls_cert=server.pem",
             "-o", "dataplane.tls_key=server.key"], timeout=30, env=dict(os.environ, CREDENTIALS_DIRECTORY=str(pki)))
    assert r.returncode == 0, r.stderr


def test_bad_certificate_stops_start(daemon, pki):
    d = daemon(("dataplane.tls=on", f"dataplane.tls_cert={pki / 'missing.pem'}",
                f"dataplane.tls_key={pki / 'server.key'}"), ready=False)
    assert d.p.wait(60) == 1
    assert "[dataplane] tls: certificate" in d.log() and "missing.pem" in d.log(), d.log()


def test_reload_rereads_certificate(daemon, cli, pki):
    d = daemon(tls_overrides(pki))
    assert tls_cli(cli, d, "ping", ca=pki / "ca.pem").returncode == 0
    # renewed files under the same names (here: from the other CA), then SIGHUP
    shutil.copy(pki / "server2.pem", pki / "server.pem")
    shutil.copy(pki / "server2.key", pki / "server.key")
    d.signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while "TLS certificate reloaded" not in d.log() and time.monotonic() < end:
        time.sleep(0.05)
    assert "TLS certificate reloaded" in d.log(), d.log()
    time.sleep(0.1)  # the transport takes it at its next pass (5 ms)
    r = tls_cli(cli, d, "ping", ca=pki / "other_ca.pem")
    assert r.returncode == 0, r.stderr
    assert tls_cli(cli, d, "ping", ca=pki / "ca.pem").returncode == EXIT_AUTH
    # a broken file at reload: rejected, the certificate in force stays
    (pki / "server.pem").write_text("not a certificate\n")
    d.signal(signal.SIGHUP)
    end = time.monotonic() + 10
    while "old configuration and certificate stay" not in d.log() and time.monotonic() < end:
        time.sleep(0.05)
    assert "old configuration and certificate stay" in d.log(), d.log()
    assert tls_cli(cli, d, "ping", ca=pki / "other_ca.pem").returncode == 0


def test_mutual_tls(daemon, cli, pki):
    d = daemon(tls_overrides(pki, extra=(f"dataplane.tls_client_ca={pki / 'ca.pem'}",)))
    r = tls_cli(cli, d, "--tls-cert", pki / "client.pem", "--tls-key", pki / "client.key", "generate", "-n", 4,
                "--temp", 0, PROMPT, ca=pki / "ca.pem")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = tls_cli(cli, d, "ping", ca=pki / "ca.pem")
    assert r.returncode != 0 and "certificate required" in r.stderr, r.stderr
    # a client certificate from a CA the server does not trust
    make_cert(pki, "client2", "other_ca", "DNS:client2", usage="clientAuth")
    r = tls_cli(cli, d, "--tls-cert", pki / "client2.pem", "--tls-key", pki / "client2.key", "ping", ca=pki / "ca.pem")
    assert r.returncode != 0 and "unknown ca" in r.stderr, r.stderr
    d.wait_metric('sluice_tls_handshakes_total{transport="tcp",result="failed"}', lambda v: v >= 2)
