#!/usr/bin/env python3
"""tests/fuzz/gen_safetensors_seeds.py — writes the seeds of fuzz_safetensors
into tests/corpus/fuzz/safetensors: a tiny ranker-v1 model (d_model 4, one
layer, 3 items with a vocabulary), fp32 and int8, each about 2.5 KB, so
that the fuzzer mutates whole files quickly, and a few invalid variants of
them (truncated, overlapping offsets, a bad header length).

The layout follows llm/model.h and llm/safetensors.h; python3 alone (no
numpy, no torch). Run from the repository root; the output is committed,
so run it again only when the format changes."""
import json
import os
import struct

D, H, L, FFN, HIST, ITEMS, ACTIONS = 4, 1, 1, 4, 2, 3, 2
OUT = "tests/corpus/fuzz/safetensors"


def specs():
    """(name, shape, quantized) in llm/model.c's canonical order."""
    s = [("item_emb", [ITEMS, D], True), ("action_emb", [ACTIONS, D], False), ("pos_emb", [HIST + 1, D], False)]
    for l in range(L):
        p = f"layers.{l}."
        s += [(p + "ln1.weight", [D], False), (p + "ln1.bias", [D], False),
              (p + "attn.qkv.weight", [3 * D, D], True), (p + "attn.qkv.bias", [3 * D], False),
              (p + "attn.out.weight", [D, D], True), (p + "attn.out.bias", [D], False),
              (p + "ln2.weight", [D], False), (p + "ln2.bias", [D], False),
              (p + "ffn.up.weight", [FFN, D], True), (p + "ffn.up.bias", [FFN], False),
              (p + "ffn.down.weight", [D, FFN], True), (p + "ffn.down.bias", [D], False)]
    s += [("ln_f.weight", [D], False), ("ln_f.bias", [D], False), ("head.weight", [1, D], False),
          ("head.bias", [1], False)]
    return s


def numel(shape):
    n = 1
    for x in shape:
        n *= x
    return n


def model(quant):
    tensors = []  # (name, dtype, shape, bytes)
    for i, (name, shape, q) in enumerate(specs()):
        n = numel(shape)
        if q and quant == "int8":
            tensors.append((name, "I8", shape, bytes((j * 7 + i) % 255 - 127 & 0xff for j in range(n))))
            tensors.append((name + "_scale", "F32", [shape[0]], struct.pack(f"<{shape[0]}f", *[0.01] * shape[0])))
        else:
            tensors.append((name, "F32", shape, struct.pack(f"<{n}f", *[((j + i) % 5 - 2) * 0.1 for j in range(n)])))
    vocab = b"i1\ni2\n"
    tensors.append(("vocab.items", "U8", [len(vocab)], vocab))
    meta = {"arch": "ranker-v1", "d_model": str(D), "n_heads": str(H), "n_layers": str(L), "d_ffn": str(FFN),
            "max_hist": str(HIST), "n_items": str(ITEMS), "n_actions": str(ACTIONS), "quant": quant}
    return meta, tensors


def image(meta, tensors, overlap=False):
    hdr, off = {"__metadata__": meta}, 0
    for name, dt, shape, data in tensors:
        begin = off - len(data) // 2 if overlap and off else off
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [begin, begin + len(data)]}
        off = begin + len(data)
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(t[3] for t in tensors)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


os.makedirs(OUT, exist_ok=True)
for quant in ("none", "int8"):
    meta, tensors = model(quant)
    kind = "fp32" if quant == "none" else "int8"
    good = image(meta, tensors)
    write(f"valid-tiny-{kind}.safetensors", good)
    write(f"bad-tiny-{kind}-truncated.safetensors", good[: len(good) - 5])
write("bad-tiny-fp32-overlap.safetensors", image(*model("none"), overlap=True))
meta, tensors = model("none")
write("bad-tiny-fp32-nan.safetensors", image(meta, [(n, d, s, b"\x00\x00\xc0\x7f" * (len(b) // 4)) if d == "F32" else
                                                   (n, d, s, b) for n, d, s, b in tensors]))
write("valid-two-tensors.safetensors", image({"k": "v"}, [("a", "U8", [3], b"abc"), ("b", "I16", [], b"\x01\x00")]))
write("bad-header-length-huge.safetensors", struct.pack("<Q", 1 << 62) + b"{}")
write("bad-empty.safetensors", b"")
