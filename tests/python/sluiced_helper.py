"""Helpers for test_sluiced.py: start and stop a real sluiced, read /metrics, run the sluice
CLI, and a minimal raw encoder of protocol frames (docs/protocol.md) for the tests that send
what the client library never would (cancel mid-stream, silent UDP clients, bad frames)."""
import os
import re
import signal
import socket
import struct
import subprocess
import time
import urllib.request

MAGIC = 0x43554C53
OP = dict(HELLO=1, INFO=2, GENERATE=3, TOKENS=4, DONE=5, ERROR=6, CANCEL=7, PING=8, PONG=9, TOKENIZE=10,
          RESEND=11, ACK=12, COOKIE=13)
ERR = dict(BAD_FRAME=1, BAD_VERSION=2, BAD_CRC=3, UNKNOWN_OPCODE=4, TOO_LARGE=5, PROMPT_TOO_LONG=6,
           BAD_PARAM=7, BUSY=8, NOT_FOUND=9, CANCELLED=10, DEADLINE=11, INTERNAL=12, UNAUTHENTICATED=13,
           RATE_LIMITED=14, SHUTTING_DOWN=15)
F_CRC = 1
F_COOKIE = 2


def _crc_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_T = _crc_table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(op, rid, payload=b"", crc=True, version=1, seq=0, frag_index=0, frag_count=1, flags=None,
          payload_len=None):
    fl = (F_CRC if crc else 0) if flags is None else flags
    plen = len(payload) if payload_len is None else payload_len
    h = struct.pack("<IBBHQIIHH", MAGIC, version, op, fl, rid, seq, plen, frag_index, frag_count)
    c = crc32c(payload, crc32c(h)) if fl & F_CRC else 0
    return h + struct.pack("<I", c) + payload


def generate_payload(prompt=b"", ids=None, max_tokens=0, temperature=0.0, top_k=0, top_p=1.0, min_p=0.0,
                     repeat_penalty=1.0, seed=0, deadline_ms=0, stops=(), flags=None):
    if flags is None:
        flags = 1 if ids is not None else (1 << 3)  # PROMPT_IDS, or ADD_SPECIAL
    body = b"".join(struct.pack("<H", len(s)) + s for s in stops)
    if ids is not None:
        pr, plen = b"".join(struct.pack("<i", i) for i in ids), len(ids)
    else:
        pr, plen = prompt, len(prompt)
    fixed = struct.pack("<IIQfifffffiIIHH", flags, max_tokens, seed, temperature, top_k, top_p, min_p,
                        repeat_penalty, 0.0, 0.0, 0, deadline_ms, plen, len(stops), 0)
    assert len(fixed) == 60
    return fixed + body + pr


def hello_frame(rid=0):
    """A UDP HELLO padded to 1200 bytes (the server answers COOKIE + INFO)."""
    return frame(OP["HELLO"], rid, b"\x01\x00\x00\x00" + bytes(1200 - 36))


def with_cookie(buf, cookie):
    """The frame buf (CRC set, no trailers) with flag COOKIE and the cookie after its payload;
    anything else (a deliberately broken frame, HELLO, PING) is returned as it is."""
    if len(buf) < 32:
        return buf
    magic, ver, op, fl, rid, seq, plen, fi, fc, crc = struct.unpack_from("<IBBHQIIHHI", buf)
    if (magic != MAGIC or fl != F_CRC or len(buf) != 32 + plen or op in (OP["HELLO"], OP["PING"])
            or crc32c(buf[32:], crc32c(buf[:28])) != crc):
        return buf
    h = struct.pack("<IBBHQIIHH", magic, ver, op, fl | F_COOKIE, rid, seq, plen, fi, fc)
    body = buf[32:] + cookie
    return h + struct.pack("<I", crc32c(body, crc32c(h))) + body


def parse(buf):
    """One frame: (opcode, flags, request_id, seq, payload)."""
    magic, ver, op, fl, rid, seq, plen, fi, fc, crc = struct.unpack_from("<IBBHQIIHHI", buf)
    assert magic == MAGIC
    return op, fl, rid, seq, bytes(buf[32:32 + plen])


def parse_error(p):
    code, flags, _, retry, detail, mlen = struct.unpack_from("<HBBIIH", p)
    return dict(code=code, terminal=bool(flags & 1), retry=retry, detail=detail, msg=p[16:16 + mlen].decode())


def parse_done(p):
    reason, stop_index, _, pt, gt, q, ttft, total = struct.unpack("<BBHIIIQQ", p[:32])
    return dict(reason=reason, prompt_tokens=pt, generated_tokens=gt, ttft_us=ttft)


def parse_tokens(p):
    kind, _, n, tl = struct.unpack_from("<BBHI", p)
    ids = list(struct.unpack_from(f"<{n}i", p, 8))
    return ids, p[8 + 4 * n:8 + 4 * n + tl]


class TcpConn:
    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.s.sendall(data)

    def recv_frame(self):
        while True:
            if len(self.buf) >= 32:
                plen = struct.unpack_from("<I", self.buf, 20)[0]
                if len(self.buf) >= 32 + plen:
                    f, self.buf = self.buf[:32 + plen], self.buf[32 + plen:]
                    return parse(f)
            d = self.s.recv(65536)
            if not d:
                return None
            self.buf += d

    def close(self):
        self.s.close()


class UdpConn:
    """A raw UDP client. With cookie=True it first gets a cookie (HELLO) and puts it on every
    well-formed frame it sends, as libsluice does (docs/protocol.md §7.2); COOKIE and INFO
    frames for request id 0 (the cookie exchange) are skipped by recv_frame."""

    def __init__(self, port, timeout=5, cookie=True, host="127.0.0.1"):
        self.s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.s.settimeout(timeout)
        self.addr = (host, port)
        self.cookie = None
        if cookie:
            self.get_cookie()

    def get_cookie(self, tries=5):
        for _ in range(tries):
            self.s.sendto(hello_frame(0), self.addr)
            end = time.monotonic() + 1
            while time.monotonic() < end:
                try:
                    d, _ = self.s.recvfrom(65536)
                except socket.timeout:
                    break
                op, fl, rid, seq, p = parse(d)
                if op == OP["COOKIE"]:
                    self.cookie = p[8:40]
                    return self.cookie
                if op == OP["INFO"] and not (struct.unpack_from("<I", p, 44)[0] & 2):
                    return None  # the server requires no cookie
        raise AssertionError("no COOKIE from the server")

    def send(self, data):
        self.s.sendto(with_cookie(data, self.cookie) if self.cookie else data, self.addr)

    def recv_frame(self):
        while True:
            d, _ = self.s.recvfrom(65536)
            f = parse(d)
            if f[2] == 0 and f[0] in (OP["COOKIE"], OP["INFO"]) and self.cookie is not None:
                continue
            return f

    def close(self):
        self.s.close()


class Daemon:
    """A sluiced on 127.0.0.1 with ports chosen by the kernel (port 0), read back from its log."""

    def __init__(self, exe, model, tmp_path, overrides=(), env=None, config_text=None):
        self.exe, self.tmp = exe, tmp_path
        self.log_path = tmp_path / f"sluiced-{time.monotonic_ns()}.log"
        self.conf = tmp_path / "sluice.conf"
        if config_text is None:
            config_text = (f"[model]\npath = {model}\n[dataplane]\nudp_listen = 127.0.0.1:0\n"
                           "tcp_listen = 127.0.0.1:0\n[metrics]\nhttp_listen = 127.0.0.1:0\n"
                           "[engine]\nthreads = 2\nkv_blocks = 512\nmax_running = 16\nmax_queued = 64\n"
                           "[log]\ntarget = stderr\n[auth]\nmode = off\n")
        self.conf.write_text(config_text)
        e = dict(os.environ)
        e.pop("NOTIFY_SOCKET", None)
        e.update(env or {})
        self.logf = open(self.log_path, "w")
        self.p = subprocess.Popen([str(exe), "-c", str(self.conf)] + [a for o in overrides for a in ("-o", o)],
                                  stdout=self.logf, stderr=subprocess.STDOUT, env=e)
        self.udp = self.tcp = self.http = None

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.log()
            m = re.search(r"serving .* on (.*); http (\S+)", t)
            if m:
                u = re.search(r"udp 127\.0\.0\.1:(\d+)", m.group(1))
                c = re.search(r"tcp 127\.0\.0\.1:(\d+)", m.group(1))
                h = re.search(r":(\d+)$", m.group(2))
                self.udp = int(u.group(1)) if u else None
                self.tcp = int(c.group(1)) if c else None
                self.http = int(h.group(1)) if h else None
                return self
            if self.p.poll() is not None:
                raise AssertionError(f"sluiced exited with {self.p.returncode}:\n{t}")
            time.sleep(0.05)
        raise AssertionError(f"sluiced not ready in {timeout} s:\n{self.log()}")

    def port(self, transport):
        return self.udp if transport == "udp" else self.tcp

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def health(self):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=5) as r:
                return r.status, r.read().decode().strip()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode().strip()

    def wait_metric(self, key, pred, timeout=10):
        end = time.monotonic() + timeout
        v = None
        while time.monotonic() < end:
            v = self.metrics().get(key)
            if v is not None and pred(v):
                return v
            time.sleep(0.05)
        raise AssertionError(f"{key} = {v}, condition not met in {timeout} s")

    def alive(self):
        return self.p.poll() is None

    def signal(self, sig):
        self.p.send_signal(sig)

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.logf.close()
        return self.p.returncode
