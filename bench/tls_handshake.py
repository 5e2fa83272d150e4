#!/usr/bin/env python3
"""TLS handshake cost on sluiced's TCP transport (docs/security.md): starts two sluiced (TLS on,
and plaintext TCP) on 127.0.0.1 with certificates made by the `openssl` CLI, then opens N
connections to each from Python's ssl module (TCP_NODELAY) and reports connect(+handshake)
and connect + first HELLO/INFO exchange, p50 and p99.

    bench/tls_handshake.py BUILD_DIR MODEL.gguf [N]
"""
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sh(*a, cwd):
    subprocess.run([str(x) for x in a], cwd=cwd, check=True, capture_output=True)


def start(exe, conf, log, extra=()):
    p = subprocess.Popen([exe, "-c", conf, *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    for _ in range(600):
        m = re.search(r"serving .* on tcp 127\.0\.0\.1:(\d+)", Path(log).read_text())
        if m:
            return p, int(m.group(1))
        time.sleep(0.05)
    p.kill()
    sys.exit(f"sluiced did not start: {Path(log).read_text()}")


def hello():
    p = struct.pack("<BBBB", 1, 0, 0, 0)
    return struct.pack("<IBBHQIIHHI", 0x43554C53, 1, 1, 0, 7, 0, len(p), 0, 1, 0) + p


def one(port, ctx):
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx:
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    t1 = time.perf_counter()
    s.sendall(hello())
    b = b""
    while len(b) < 32 or len(b) < 32 + struct.unpack_from("<I", b, 20)[0]:
        b += s.recv(65536)
    t2 = time.perf_counter()
    s.close()
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3


def main():
    build, model = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    exe = build / "daemon" / "sluiced"
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", "ca.key", "-out", "ca.pem", "-days", 1, "-subj", "/CN=bench ca", cwd=d)
        (d / "ext").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
           "s.key", "-out", "s.csr", "-subj", "/CN=bench", cwd=d)
        sh("openssl", "x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
           "-out", "s.pem", "-days", 1, "-extfile", "ext", cwd=d)
        (d / "c.conf").write_text(f"[model]\npath = {model}\n[dataplane]\ntransports = tcp\n"
                                  "tcp_listen = 127.0.0.1:0\n[metrics]\nhttp_listen = off\n"
                                  "[engine]\nthreads = 1\nkv_blocks = 64\n[log]\ntarget = stderr\n"
                                  "[auth]\nmode = off\n")
        pt, tls_port = start(exe, d / "c.conf", d / "tls.log",
                             ("-o", "dataplane.tls=on", "-o", f"dataplane.tls_cert={d / 's.pem'}",
                              "-o", f"dataplane.tls_key={d / 's.key'}"))
        pp, plain_port = start(exe, d / "c.conf", d / "plain.log")
        ctx = ssl.create_default_context(cafile=str(d / "ca.pem"))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            for name, port, c in (("plain", plain_port, None), ("tls", tls_port, ctx)):
                one(port, c)
                r = [one(port, c) for _ in range(n)]
                a = sorted(x[0] for x in r)
                b = sorted(x[1] for x in r)
                print(f"{name:5} connect(+handshake) p50 {a[n // 2]:.3f} ms p99 {a[n * 99 // 100]:.3f} ms; "
                      f"connect + HELLO/INFO p50 {b[n // 2]:.3f} ms p99 {b[n * 99 // 100]:.3f} ms")
        finally:
            pt.terminate()
            pp.terminate()
            pt.wait(20)
            pp.wait(20)


if __name__ == "__main__":
    main()
