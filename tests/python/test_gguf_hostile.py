"""sluice-gguf against hostile files: a small valid model written with the gguf Python
writer (the implementation we did not write), truncated at every section boundary and
mutated field by field. Each bad file must exit 1 (never a signal) with exactly one stderr
line that names the problem; the untouched file must exit 0."""
import struct

import numpy as np
import pytest

from conftest import run

gguf = pytest.importorskip("gguf")


def _write_model(path):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_uint32("llama.block_count", 1)
    w.add_bool("tokenizer.ggml.add_bos_token", True)
    w.add_string("general.name", "hostile")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "b"])
    w.add_array("tokenizer.ggml.scores", [0.0, 0.0, -1.0, -2.0])
    w.add_tensor("token_embd.weight", np.arange(64, dtype=np.float16).reshape(4, 16))
    w.add_tensor("output_norm.weight", np.ones(16, dtype=np.float32))
    q = gguf.quants.quantize(np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32),
                             gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _layout(b):
    """Offsets of every field of a (valid) GGUF image, from our own small walker."""
    n_tensors, n_kv = struct.unpack_from("<QQ", b, 8)
    pos = 24
    kvs, tensors = [], []

    def skip_value(t, pos):
        if t in _SCALAR:
            return pos + _SCALAR[t]
        if t == 8:
            (n,) = struct.unpack_from("<Q", b, pos)
            return pos + 8 + n
        et, n = struct.unpack_from("<IQ", b, pos)
        pos += 12
        for _ in range(n):
            pos = skip_value(et, pos)
        return pos

    for _ in range(n_kv):
        start = pos
        (klen,) = struct.unpack_from("<Q", b, pos)
        key = b[pos + 8:pos + 8 + klen].decode()
        tpos = pos + 8 + klen
        (t,) = struct.unpack_from("<I", b, tpos)
        end = skip_value(t, tpos + 4)
        kvs.append(dict(start=start, key=key, type_pos=tpos, type=t, val=tpos + 4, end=end))
        pos = end
    for _ in range(n_tensors):
        start = pos
        (nlen,) = struct.unpack_from("<Q", b, pos)
        name = b[pos + 8:pos + 8 + nlen].decode()
        p = pos + 8 + nlen
        (nd,) = struct.unpack_from("<I", b, p)
        ne_pos = p + 4
        type_pos = ne_pos + 8 * nd
        off_pos = type_pos + 4
        (off,) = struct.unpack_from("<Q", b, off_pos)
        tensors.append(dict(start=start, name=name, ndims_pos=p, ne_pos=ne_pos, type_pos=type_pos,
                            off_pos=off_pos, offset=off, end=off_pos + 8))
        pos = off_pos + 8
    return dict(kvs=kvs, tensors=tensors, header_end=pos, data_offset=(pos + 63) // 64 * 64)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf")
    b = _write_model(d / "valid.gguf")
    return d, b, _layout(b)


def _check_bad(tool, path, words):
    r = run([tool("sluice-gguf"), path], text=True, errors="replace")
    assert r.returncode == 1, f"{path.name}: exit {r.returncode} (stderr {r.stderr!r})"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, f"{path.name}: stderr has {len(lines)} lines: {r.stderr!r}"
    assert lines[0].startswith(f"sluice-gguf: {path}: "), lines[0]
    if isinstance(words, str):
        words = (words,)
    assert any(w in lines[0] for w in words), f"{path.name}: {lines[0]!r} names none of {words}"
    return lines[0]


def test_valid(tool, model):
    d, b, lay = model
    r = run([tool("sluice-gguf"), "--tensors", d / "valid.gguf"], text=True, errors="replace")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "version: 3" in r.stdout and "alignment: 64" in r.stdout
    assert f"data: offset {lay['data_offset']}" in r.stdout
    assert '"general.name" string = "hostile"' in r.stdout
    assert "[string x 4]" in r.stdout
    for t in lay["tensors"]:
        assert t["name"] in r.stdout
    assert "Q8_0" in r.stdout and "[32, 2]" in r.stdout


def test_truncated_at_every_boundary(tool, model):
    d, b, lay = model
    cuts = {0, 3, 4, 8, 16, 24, lay["header_end"], lay["data_offset"]}
    for kv in lay["kvs"]:
        cuts |= {kv["start"], kv["start"] + 8, kv["type_pos"], kv["val"], kv["end"] - 1}
    for t in lay["tensors"]:
        cuts |= {t["start"], t["ndims_pos"], t["ne_pos"], t["type_pos"], t["off_pos"], t["end"] - 1,
                 lay["data_offset"] + t["offset"], lay["data_offset"] + t["offset"] + 1}
    cuts = sorted(c for c in cuts if c < len(b))
    assert len(cuts) > 40
    for n in cuts:
        p = d / f"trunc-{n}.gguf"
        p.write_bytes(b[:n])
        words = ("empty file",) if n == 0 else ("truncated", "past end of file", "exceeds remaining",
                                                "impossible")
        _check_bad(tool, p, words)


def _mutate(d, b, name, pos, fmt, value):
    m = bytearray(b)
    struct.pack_into(fmt, m, pos, value)
    p = d / f"{name}.gguf"
    p.write_bytes(bytes(m))
    return p


def _kv(lay, key):
    return next(k for k in lay["kvs"] if k["key"] == key)


def test_mutations(tool, model):
    d, b, lay = model
    t0, t1, t2 = lay["tensors"]
    bos, align = _kv(lay, "tokenizer.ggml.add_bos_token"), _kv(lay, "general.alignment")
    name = _kv(lay, "general.name")
    cases = [
        ("magic", 0, "<I", 0x46554748, "bad magic"),
        ("v1", 4, "<I", 1, "version 1"),
        ("v4", 4, "<I", 4, "version 4"),
        ("big-endian", 4, "<I", 0x03000000, "big-endian"),
        ("n-tensors", 8, "<Q", 1 << 60, "tensor count"),
        ("n-kv", 16, "<Q", 2**64 - 1, "metadata count"),
        ("key-len", lay["kvs"][0]["start"], "<Q", 2**64 - 1, "key length 18446744073709551615 exceeds"),
        ("str-len", name["val"], "<Q", 10**12, "string length 1000000000000 exceeds"),
        ("value-type", bos["type_pos"], "<I", 99, "unknown value type 99"),
        ("bool-byte", bos["val"], "<B", 2, "byte 2"),
        ("alignment-0", align["val"], "<I", 0, "general.alignment 0"),
        ("alignment-48", align["val"], "<I", 48, "general.alignment 48"),
        ("n-dims-0", t0["ndims_pos"], "<I", 0, "n_dims 0"),
        ("n-dims-5", t0["ndims_pos"], "<I", 5, "n_dims 5"),
        ("ne-0", t0["ne_pos"] + 8, "<Q", 0, "ne[1] = 0"),
        ("ne0-block", t2["ne_pos"], "<Q", 16, "not a multiple of the Q8_0 block size 32"),
        ("type-unknown", t1["type_pos"], "<I", 77, "unknown tensor type 77"),
        ("offset-unaligned", t1["off_pos"], "<Q", t1["offset"] + 4, "not a multiple of the alignment 64"),
        ("offset-past-end", t2["off_pos"], "<Q", 1 << 30, "past end of file"),
        ("offset-wraps", t2["off_pos"], "<Q", 2**64 - 64, "past end of file"),
        ("overlap", t1["off_pos"], "<Q", t0["offset"], "overlaps"),
        ("ne-overflow", t0["ne_pos"], "<Q", 2**62, ("overflows", "past end of file")),
    ]
    for cname, pos, fmt, value, words in cases:
        line = _check_bad(tool, _mutate(d, b, cname, pos, fmt, value), words)
        if cname.startswith(("n-dims", "ne-0", "type-", "offset-unaligned")):
            assert "tensor '" in line, line  # names which tensor


def test_duplicate_names_by_construction(tool, tmp_path):
    """Duplicates that the writer itself would refuse: build them with raw bytes."""
    def kv_u32(key, v):
        k = key.encode()
        return struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, v)

    def tensor(name, off):
        n = name.encode()
        return struct.pack("<Q", len(n)) + n + struct.pack("<IQIQ", 1, 8, 0, off)

    hdr = struct.pack("<IIQQ", 0x46554747, 3, 2, 2)
    body = kv_u32("a.b", 1) + kv_u32("a.c", 2) + tensor("w", 0) + tensor("w", 32)
    img = hdr + body
    img += b"\0" * ((-len(img)) % 32) + b"\1" * 64
    p = tmp_path / "dup-tensor.gguf"
    p.write_bytes(img)
    _check_bad(tool, p, "duplicate tensor name 'w'")

    body = kv_u32("a.b", 1) + kv_u32("a.b", 2) + tensor("w", 0) + tensor("v", 32)
    img = hdr + body
    img += b"\0" * ((-len(img)) % 32) + b"\1" * 64
    p = tmp_path / "dup-key.gguf"
    p.write_bytes(img)
    _check_bad(tool, p, "duplicate metadata key 'a.b'")

    # excessive nesting: arrays 9 deep
    k = b"deep"
    v = struct.pack("<Q", len(k)) + k + struct.pack("<I", 9)
    for _ in range(8):
        v += struct.pack("<IQ", 9, 1)
    v += struct.pack("<IQ", 5, 1) + struct.pack("<i", 7)
    img = struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + v
    p = tmp_path / "deep.gguf"
    p.write_bytes(img)
    _check_bad(tool, p, "nested deeper than 8")


def test_not_regular_and_empty(tool, tmp_path):
    _check_bad(tool, tmp_path, "not a regular file")
    e = tmp_path / "empty.gguf"
    e.write_bytes(b"")
    _check_bad(tool, e, "empty file")
    r = run([tool("sluice-gguf"), tmp_path / "missing.gguf"], text=True, errors="replace")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "No such file" in r.stderr


def test_real_files_parse(tool, vocab_dir):
    for p in sorted(vocab_dir.glob("*.gguf")):
        r = run([tool("sluice-gguf"), p], text=True, errors="replace")
        assert r.returncode == 0, f"{p}: {r.stderr}"
