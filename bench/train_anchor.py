#!/usr/bin/env python3
"""The PyTorch anchor for `rankd train`: ranker-v1's retrieval head alone,
trained as the reference run of issue 3 describes (full-catalog
cross-entropy at every position, Adam, dropout on embeddings, attention and
FFN outputs), on a sequence file such as ../shared/data/amazon-toys.
Prints one JSON line per epoch: training loss, validation NDCG@10 (full
ranking, history excluded) every --eval-every epochs, and seconds.

    python3 bench/train_anchor.py ../shared/data/amazon-toys/Toys_and_Games.txt --epochs 3
"""
import argparse, json, math, os, sys, time
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference"))
from ranker_v1 import RankerV1, gelu_tanh  # noqa: E402


def load(path):
    seqs = []
    for line in open(path):
        f = line.split()
        if len(f) > 1:
            seqs.append([int(x) for x in f[1:]])
    n_items = max(max(s) for s in seqs) + 1
    return seqs, n_items


def forward_all(model, items, acts, lengths, drop):
    """Hidden state at every position (the reference forward, without the
    candidate path, with dropout as in training)."""
    B, n = items.shape
    d = model.cfg["d_model"]; H = model.cfg["n_heads"]; dh = d // H
    t = torch.arange(n)
    valid = t[None, :] < lengths[:, None]
    pos = torch.where(valid, lengths[:, None] - t[None, :], torch.zeros_like(t[None, :]))
    x = model.item_emb[items] + model.action_emb[acts] + model.pos_emb[pos]
    x = F.dropout(x * valid[..., None], drop, model.training)
    causal = (t[None, :] <= t[:, None])
    mask = causal[None, None] & valid[:, None, None, :]
    for blk in model.layers:
        q, k, v = blk.attn.qkv(blk.ln1(x)).split(d, -1)
        sh = lambda z: z.reshape(B, n, H, dh).transpose(1, 2)
        q, k, v = map(sh, (q, k, v))
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dh)
        s = s.masked_fill(~mask, torch.finfo(s.dtype).min)
        p = torch.softmax(s, -1) * mask
        a = (p @ v).transpose(1, 2).reshape(B, n, d)
        x = x + F.dropout(blk.attn.out(a), drop, model.training)
        x = x + F.dropout(blk.ffn.down(gelu_tanh(blk.ffn.up(blk.ln2(x)))), drop, model.training)
        x = x * valid[..., None]
    return model.ln_f(x)


def batches(seqs, max_hist, bs, gen):
    order = torch.randperm(len(seqs), generator=gen).tolist()
    for i in range(0, len(order), bs):
        chunk = [seqs[j][:-2] for j in order[i:i + bs] if len(seqs[j]) >= 4]
        if not chunk:
            continue
        L = [min(len(s) - 1, max_hist) for s in chunk]
        n = max(L)
        items = torch.zeros(len(chunk), n, dtype=torch.long); tgt = torch.zeros_like(items)
        for b, s in enumerate(chunk):
            inp, nxt = s[:-1][-L[b]:], s[1:][-L[b]:]
            items[b, :L[b]] = torch.tensor(inp); tgt[b, :L[b]] = torch.tensor(nxt)
        yield items, tgt, torch.tensor(L)


def evaluate(model, seqs, max_hist, n_items, users):
    model.eval(); hits = 0.0; n = 0
    with torch.no_grad():
        for i in range(0, min(users, len(seqs)), 256):
            chunk = [s for s in seqs[i:i + 256] if len(s) >= 3][: users - n]
            hist = [s[:-2][-max_hist:] for s in chunk]
            L = torch.tensor([len(h) for h in hist]); m = int(L.max())
            items = torch.zeros(len(chunk), m, dtype=torch.long)
            for b, h in enumerate(hist):
                items[b, :len(h)] = torch.tensor(h)
            u = forward_all(model, items, torch.zeros_like(items), L, 0.0)[torch.arange(len(chunk)), L - 1]
            logits = u @ model.item_emb.T
            logits[:, 0] = -float("inf")
            for b, s in enumerate(chunk):
                logits[b, torch.tensor(s[:-2])] = -float("inf")
                tgt = s[-2]
                rank = int((logits[b] > logits[b, tgt]).sum()) + 1
                hits += 1 / math.log2(rank + 1) if rank <= 10 else 0.0
            n += len(chunk)
    model.train()
    return hits / max(n, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data"); ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--d-model", type=int, default=64); ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2); ap.add_argument("--d-ffn", type=int, default=256)
    ap.add_argument("--max-hist", type=int, default=50); ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=1); ap.add_argument("--eval-users", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.manual_seed(a.seed); torch.set_num_threads(os.cpu_count())
    seqs, n_items = load(a.data)
    model = RankerV1(n_items, a.d_model, a.heads, a.layers, a.d_ffn, a.max_hist)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    for ep in range(1, a.epochs + 1):
        t0 = time.perf_counter(); tot = 0.0; cnt = 0
        for items, tgt, L in batches(seqs, a.max_hist, a.batch, gen):
            h = forward_all(model, items, torch.zeros_like(items), L, a.dropout)
            valid = tgt > 0
            logits = h[valid] @ model.item_emb.T
            logits[:, 0] = -float("inf")
            loss = F.cross_entropy(logits, tgt[valid])
            opt.zero_grad(); loss.backward(); opt.step()
            tot += float(loss) * int(valid.sum()); cnt += int(valid.sum())
        dt = time.perf_counter() - t0
        ndcg = evaluate(model, seqs, a.max_hist, n_items, a.eval_users) if ep % a.eval_every == 0 else None
        print(json.dumps({"anchor": "pytorch-train", "epoch": ep, "loss": round(tot / cnt, 4),
                          "valid_ndcg10": None if ndcg is None else round(ndcg, 4),
                          "seconds": round(dt, 1), "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
