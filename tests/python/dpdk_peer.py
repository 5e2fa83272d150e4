"""The client side of test_dpdk.py, run inside the test's network namespace with
`ip netns exec NS python3 dpdk_peer.py COMMAND ...`: ICMP echo through a raw socket, raw
Ethernet frames through a packet socket (malformed IPv4/UDP the kernel would never send),
and raw protocol requests over a kernel UDP socket. Prints one JSON object."""
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sluiced_helper import OP, frame, generate_payload, hello_frame, parse, parse_done, parse_error, parse_tokens, \
    with_cookie  # noqa: E402


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(ip, n):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(1)
    rtts = []
    for i in range(n):
        pl = b"sluice-%d" % i
        h = struct.pack("!BBHHH", 8, 0, 0, 0x5151, i)
        pkt = struct.pack("!BBHHH", 8, 0, csum(h + pl), 0x5151, i) + pl
        t = time.perf_counter()
        s.sendto(pkt, (ip, 0))
        try:
            while True:
                d, _ = s.recvfrom(2048)
                ihl = (d[0] & 15) * 4
                if d[ihl] == 0 and d[ihl + 8:] == pl and csum(d[ihl:]) == 0 and csum(d[:ihl]) == 0:
                    rtts.append((time.perf_counter() - t) * 1e6)
                    break
        except socket.timeout:
            pass
    return {"replies": len(rtts), "rtt_us": rtts}


def mac_of(iface):
    with open(f"/sys/class/net/{iface}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def ip_header(src, dst, proto, payload, frag=0x4000, tot=None, bad_csum=False):
    tot = 20 + len(payload) if tot is None else tot
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tot, 7, frag, 64, proto, 0, src, dst)
    c = csum(h) ^ (0x5555 if bad_csum else 0)
    return h[:10] + struct.pack("!H", c) + h[12:]


def udp_datagram(src, dst, sport, dport, payload, bad_csum=False, ulen=None):
    ulen = 8 + len(payload) if ulen is None else ulen
    u = struct.pack("!HHHH", sport, dport, ulen, 0)
    c = csum(src + dst + struct.pack("!BBH", 0, 17, 8 + len(payload)) + u + payload) or 0xFFFF
    if bad_csum:
        c = c ^ 0x00FF or 0x1234  # never 0: that would mean "no checksum"
    return u[:6] + struct.pack("!H", c) + payload


def frames(iface, dst_mac_hex, ip, port):
    """Malformed L2-L4 frames, each once, then a good PING: only the PING gets an answer."""
    us, them = socket.inet_aton(ip), None
    with open(f"/sys/class/net/{iface}/address"):
        pass
    src_ip = None
    for line in os.popen(f"ip -4 -o addr show dev {iface}"):
        src_ip = line.split()[3].split("/")[0]
    them = socket.inet_aton(src_ip)
    dmac, smac = bytes.fromhex(dst_mac_hex.replace(":", "")), mac_of(iface)
    eth = dmac + smac + b"\x08\x00"
    ping_pl = struct.pack("<Q24x", 42)
    good = frame(OP["PING"], 9, ping_pl)
    sport = 40123
    cases = {
        "ip_checksum": eth + ip_header(them, us, 17, udp_datagram(them, us, sport, port, good), bad_csum=True) + udp_datagram(them, us, sport, port, good),
        "udp_checksum": eth + ip_header(them, us, 17, udp_datagram(them, us, sport, port, good)) + udp_datagram(them, us, sport, port, good, bad_csum=True),
        "short": eth + ip_header(them, us, 17, b"")[:12],
        "short_total_length": eth + ip_header(them, us, 17, b"", tot=400) + udp_datagram(them, us, sport, port, good),
        "udp_length": eth + ip_header(them, us, 17, udp_datagram(them, us, sport, port, good)) + udp_datagram(them, us, sport, port, good, ulen=20),
        "udp_port": eth + ip_header(them, us, 17, udp_datagram(them, us, sport, port + 1, good)) + udp_datagram(them, us, sport, port + 1, good),
        "ip_fragment": eth + ip_header(them, us, 17, udp_datagram(them, us, sport, port, good), frag=0x2000) + udp_datagram(them, us, sport, port, good),
        "ip_protocol": eth + ip_header(them, us, 6, b"\0" * 20) + b"\0" * 20,
        "not_our_address": eth + ip_header(them, us[:3] + bytes([us[3] + 1]), 17, udp_datagram(them, us, sport, port, good)) + udp_datagram(them, us[:3] + bytes([us[3] + 1]), sport, port, good),
        "oversize": eth + ip_header(them, us, 17, b"\0" * 2400) + b"\0" * 2400,
    }
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    sent = {}
    for name, f in cases.items():
        try:
            s.send(f)
            sent[name] = len(f)
        except OSError as e:
            sent[name] = str(e)
    # the daemon goes on: a PING from a kernel socket gets its PONG
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    u.bind((src_ip, sport))
    u.sendto(good, (ip, port))
    d, _ = u.recvfrom(2048)
    op, _, rid, _, pl = parse(d)
    return {"sent": sent, "pong": op == OP["PONG"] and struct.unpack_from("<Q", pl)[0] == 42}


def protocol_garbage(ip, port):
    """Frames that pass IPv4/UDP but not the protocol: dropped or answered as documented."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(1)
    out = {}
    bad_crc = bytearray(frame(OP["PING"], 5, struct.pack("<Q24x", 1)))
    bad_crc[40] ^= 1
    for name, data in [("bad_crc", bytes(bad_crc)), ("garbage", os.urandom(64)),
                       ("unknown_opcode", frame(0x55, 6, b"\0" * 64)),
                       ("bad_version", frame(OP["PING"], 7, b"\0" * 64, version=9)),
                       ("server_opcode", frame(OP["TOKENS"], 8, b"\0" * 64))]:
        u.sendto(data, (ip, port))
        try:
            d, _ = u.recvfrom(2048)
            op, _, rid, _, pl = parse(d)
            out[name] = {"op": op, **(parse_error(pl) if op == OP["ERROR"] else {})}
        except socket.timeout:
            out[name] = None
    return out


def generate_ids(ip, port, rid, ids, stops, max_tokens):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    payload = generate_payload(ids=ids, max_tokens=max_tokens, stops=[s.encode() for s in stops])
    cut = 1400 - 32  # the protocol's own fragmentation (§5.1), as libsluice does it
    parts = [payload[i:i + cut] for i in range(0, len(payload), cut)]
    u.sendto(hello_frame(0), (ip, port))  # the cookie first (protocol §7.2)
    cookie = None
    while cookie is None:
        op, _, r, seq, pl = parse(u.recvfrom(2048)[0])
        cookie = pl[8:40] if op == OP["COOKIE"] else None
    cut = 1400 - 32 - 32  # with the cookie trailer
    parts = [payload[i:i + cut] for i in range(0, len(payload), cut)]
    for i, part in enumerate(parts):
        u.sendto(with_cookie(frame(OP["GENERATE"], rid, part, seq=i * cut, frag_index=i, frag_count=len(parts)),
                             cookie), (ip, port))
    toks, done = [], None
    while done is None:
        d, _ = u.recvfrom(2048)
        op, _, r, seq, pl = parse(d)
        if r != rid:
            continue
        if op == OP["TOKENS"]:
            toks += parse_tokens(pl)[0]
        elif op == OP["DONE"]:
            done = parse_done(pl)
        elif op == OP["ERROR"]:
            done = parse_error(pl)
    return {"tokens": toks, "done": done}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ping":
        r = ping(args[0], int(args[1]))
    elif cmd == "frames":
        r = frames(args[0], args[1], args[2], int(args[3]))
    elif cmd == "garbage":
        r = protocol_garbage(args[0], int(args[1]))
    elif cmd == "generate_ids":
        r = generate_ids(args[0], int(args[1]), int(args[2]), json.loads(args[3]), json.loads(args[4]), int(args[5]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(r))
