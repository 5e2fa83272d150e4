#!/usr/bin/env python3
"""Writes a copy of a GGUF model with every matrix in BF16, F16 or F32 (every vector in F32),
whatever its type in the source: quantized blocks are expanded with gguf-py's reference
dequantization. The metadata (architecture, hyperparameters, tokenizer) is copied as is.

The CUDA backend reads F16 and BF16 weights only, so this is how tests/gpu/run puts a
trained model (the Q4_K_M demo model) in front of it: real weights meet far fewer near-ties
than random ones, which is what the teacher-forced agreement target is about.

F32 is the truth those are measured against (the CPU backend rounds no activation there).

    dequant_gguf.py IN.gguf OUT.gguf --type BF16|F16|F32
"""
import argparse
import contextlib
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def convert(src, dst, ty):
    r = gguf.GGUFReader(src)
    if not r.tensors:
        raise ValueError(f"{src}: no tensors (a vocabulary-only file?)")
    arch_f = r.fields.get(gguf.Keys.General.ARCHITECTURE)
    if arch_f is None:
        raise ValueError(f"{src}: no {gguf.Keys.General.ARCHITECTURE}")
    w = gguf.GGUFWriter(dst + ".part", arch_f.contents(), endianess=r.endianess)
    try:
        ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16}[ty]
        for f in r.fields.values():
            if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            if f.name == gguf.Keys.General.FILE_TYPE:
                continue  # below: what the weights now are
            vt = f.types[0]
            sub = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vt, sub_type=sub)
        w.add_file_type(int(ftype))
        n_mat = 0
        for t in r.tensors:
            if t.tensor_type in (T.F32, T.F16, T.BF16) or t.tensor_type.name.startswith(("Q", "IQ", "TQ")):
                x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
            else:
                raise ValueError(f"{t.name}: type {t.tensor_type.name} not handled")
            # numpy order: the last axis is GGUF's ne[0]
            x = x.reshape(tuple(int(d) for d in reversed(t.shape)))
            if not np.isfinite(x).all():
                raise ValueError(f"{t.name}: not finite after dequantization")
            is_matrix = len(t.shape) >= 2 and int(np.prod(t.shape[1:])) > 1
            n_mat += is_matrix
            if not is_matrix or ty == "F32":
                w.add_tensor(t.name, x, raw_dtype=T.F32)
            elif ty == "F16":
                if np.abs(x).max() > 65504:
                    raise ValueError(f"{t.name}: values beyond F16's range")
                w.add_tensor(t.name, x.astype(np.float16), raw_dtype=T.F16)
            else:
                w.add_tensor(t.name, gguf.quants.quantize(x, T.BF16), raw_dtype=T.BF16)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    except BaseException:
        with contextlib.suppress(Exception):
            w.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst + ".part")
        raise
    os.replace(dst + ".part", dst)
    return len(r.tensors), n_mat


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--type", choices=["BF16", "F16", "F32"], default="BF16")
    a = ap.parse_args()
    try:
        n, m = convert(a.src, a.dst, a.type)
    except Exception as e:  # noqa: BLE001 (a hostile file can raise anything inside gguf-py)
        print(f"dequant_gguf: {a.src}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"{a.dst}: {n} tensors, {m} matrices as {a.type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
