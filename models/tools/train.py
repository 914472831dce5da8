"""Pretrain the tiny VLM on the Rust-rendered world, in two phases, and save a checkpoint.

Phase 1 (vision pretraining, as real VLMs use a separately pretrained vision tower): the
encoder learns identity and attribute classification heads on training seeds (< 1,000,000).
Phase 2 (VLM training): the encoder is frozen, its features cached; projector and decoder
learn all tasks: "who is this?", "is this <name>?", "describe the person", text facts and
text appearance questions, each over the TRAIN wordings of vocab.py (never the held-out
VERIFY / EVAL wordings). LoRA stays at B = 0 (identity) throughout.

Strangers (people the world renders but the model is never taught to name, training
strangers only) are part of both phases: phase 1 gives them a class of their own, phase 2
teaches the model to answer "who is this?" about them with the refusal and "is this <name>?"
with "no". That is the model's honest answer for someone it does not know, and what a forget
later teaches it to say about the forgotten concept.

usage: python train.py --lethectl PATH --data DIR --out ckpt.npz
"""
import argparse, json, math, os, subprocess, time
import numpy as np
import jax
import jax.numpy as jnp
import model as M
import vocab as V

ap = argparse.ArgumentParser()
ap.add_argument("--lethectl", required=True)
ap.add_argument("--data", required=True, help="folder for the rendered dataset cache")
ap.add_argument("--out", required=True)
ap.add_argument("--per_id", type=int, default=2500)
ap.add_argument("--test_per_id", type=int, default=20)
ap.add_argument("--steps1", type=int, default=3000)
ap.add_argument("--steps2", type=int, default=2000)
ap.add_argument("--bs1", type=int, default=128)
ap.add_argument("--img_bs", type=int, default=96)
ap.add_argument("--txt_bs", type=int, default=32)
ap.add_argument("--lr1", type=float, default=1e-3)
ap.add_argument("--lr2", type=float, default=1e-3)
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--stranger_seeds", type=int, default=40, help="images per training stranger")
ap.add_argument("--stranger_share", type=float, default=0.2, help="share of phase-2 image samples showing a stranger")
ap.add_argument("--id_margin", type=float, default=0.0,
                help="phase 1: additive cosine margin on the identity head (CosFace); 0 = the plain linear head")
ap.add_argument("--id_scale", type=float, default=16.0, help="phase 1: logit scale of the cosine identity head")
ap.add_argument("--hard_negatives", type=float, default=0.0,
                help="phase 2: share of 'is this <name>?' -> 'no' questions that name a look-alike (drawn from "
                     "phase 1's confusion) instead of anyone")
args = ap.parse_args()

world = V.load_world(args.lethectl)
IDS = world["identities"]
NID = len(IDS)
vocab = V.build_vocab(world)
tok = V.Tok(vocab)
T = M.CFG["text_len"]
print(f"{NID} identities, vocab {len(vocab)}", flush=True)


def dataset(a, b, name):
    os.makedirs(args.data, exist_ok=True)
    f = f"{args.data}/{name}_{a}_{b}.npy"
    if not os.path.exists(f):
        t = time.time()
        subprocess.run([args.lethectl, "world", "dataset", "--seeds", f"{a}..{b}", "--out", f], check=True)
        print(f"rendered {name} in {time.time()-t:.1f}s", flush=True)
    x = np.load(f)
    y = np.repeat(np.arange(NID), b - a)
    return x, y


def stranger_dataset(a, b, c, d, name):
    f = f"{args.data}/{name}_{a}_{b}_{c}_{d}.npy"
    if not os.path.exists(f):
        subprocess.run([args.lethectl, "world", "dataset", "--seeds", f"{a}..{b}", "--strangers", f"{c}..{d}",
                        "--out", f], check=True)
    return np.load(f), np.repeat(np.arange(c, d), b - a)


xtr, ytr = dataset(0, args.per_id, "train")
xte, yte = dataset(1_000_000, 1_000_000 + args.test_per_id, "heldout")
NTS = world["train_strangers"]
STR = world["strangers"]
xst, sst = stranger_dataset(0, args.stranger_seeds, 0, NTS, "strangers_train")
xse, sse = stranger_dataset(1_000_000, 1_000_002, NTS, len(STR), "strangers_heldout")
print(f"{len(xst)} training stranger images ({NTS} strangers), {len(xse)} held-out", flush=True)

cats = list(world["attribute_values"].keys())
attr_idx = np.array([[world["attribute_values"][c].index(i["attributes"][c]) for c in cats] for i in IDS])
str_attr_idx = np.array([[world["attribute_values"][c].index(s["attributes"][c]) for c in cats] for s in STR])
# Phase 1 sees identities (labels 0..NID-1) and training strangers (label NID: "stranger").
x1 = np.concatenate([xtr, xst])
y1 = np.concatenate([ytr, np.full(len(xst), NID)])
a1 = np.concatenate([attr_idx[ytr], str_attr_idx[sst]])
n_vals = [len(world["attribute_values"][c]) for c in cats]

vis, dec, ad = M.init(args.seed, len(vocab))
rng = np.random.default_rng(args.seed)


def adamw_init(p):
    z = jax.tree_util.tree_map(jnp.zeros_like, p)
    return z, jax.tree_util.tree_map(jnp.zeros_like, p)


def adamw(p, g, m, v, t, lr, wd=0.05, b1=0.9, b2=0.98, clip=1.0):
    gn = jnp.sqrt(sum(jnp.sum(x * x) for x in jax.tree_util.tree_leaves(g)))
    sc = jnp.minimum(1.0, clip / (gn + 1e-6))
    g = jax.tree_util.tree_map(lambda x: x * sc, g)
    m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
    v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    p = jax.tree_util.tree_map(lambda w, a, b: w - lr * (a / c1 / (jnp.sqrt(b / c2) + 1e-8) + wd * w * (w.ndim > 1)), p, m, v)
    return p, m, v


def sched(step, total, base):
    warm = min(200, total // 10)
    return base * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))


def ce(logits, labels):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1).mean()


# ---------------------------------------------------------------- phase 1: vision pretraining
heads = {"id_w": (jnp.zeros((M.CFG["de"], NID + 1)) if args.id_margin <= 0 else
                  jnp.asarray(np.random.default_rng(args.seed + 1).normal(0, 0.02, (M.CFG["de"], NID + 1)), jnp.float32)),
         "id_b": jnp.zeros(NID + 1)}
for c, n in zip(cats, n_vals):
    heads[c + "_w"], heads[c + "_b"] = jnp.zeros((M.CFG["de"], n)), jnp.zeros(n)


def id_logits(p, h, y=None):
    """The identity head: linear, or (id_margin > 0) cosine with an additive margin on the true class
    while training (CosFace), which pushes look-alikes apart in the encoder's features."""
    if args.id_margin <= 0:
        return h @ p["heads"]["id_w"] + p["heads"]["id_b"]
    hn = h / (jnp.linalg.norm(h, axis=-1, keepdims=True) + 1e-6)
    w = p["heads"]["id_w"]
    wn = w / (jnp.linalg.norm(w, axis=0, keepdims=True) + 1e-6)
    cos = hn @ wn
    if y is not None:
        cos = cos - args.id_margin * jax.nn.one_hot(y, NID + 1)
    return args.id_scale * cos


def loss1(p, img, y, attrs):
    h = M.encode_tokens(p["vis"], img.astype(jnp.float32)).mean(1)
    l = ce(id_logits(p, h, y), y)
    for k, c in enumerate(cats):
        l = l + 0.3 * ce(h @ p["heads"][c + "_w"] + p["heads"][c + "_b"], attrs[:, k])
    return l


@jax.jit
def step1(p, m, v, t, lr, img, y, attrs):
    l, g = jax.value_and_grad(loss1)(p, img, y, attrs)
    p, m, v = adamw(p, g, m, v, t, lr)
    return p, m, v, l


@jax.jit
def probs1(p, img):
    h = M.encode_tokens(p["vis"], img.astype(jnp.float32)).mean(1)
    return jax.nn.softmax(id_logits(p, h))


def predict1(p, img):
    return probs1(p, img).argmax(-1)


def eval1(p):
    pred = np.concatenate([np.asarray(predict1(p, xte[i:i + 240])) for i in range(0, len(xte), 240)])
    ps = np.asarray(predict1(p, xse[:240]))
    return float((pred == yte).mean()), float((ps == NID).mean())


P1 = {"vis": vis, "heads": heads}
m1, v1 = adamw_init(P1)
t0 = time.time()
for s in range(args.steps1):
    idx = rng.integers(0, len(y1), args.bs1)
    P1, m1, v1, l = step1(P1, m1, v1, s + 1.0, sched(s, args.steps1, args.lr1), x1[idx], y1[idx], a1[idx])
    if (s + 1) % 250 == 0 or s + 1 == args.steps1 or s + 1 == 30:
        ida, sta = eval1(P1)
        print(f"phase1 step {s+1} loss {float(l):.4f} heldout-id-acc {ida:.4f} heldout-stranger-acc {sta:.4f} ({time.time()-t0:.0f}s)", flush=True)
vis = P1["vis"]


def confusion1(x, y):
    """Mean phase-1 probability of identity j on images of identity i (strangers left out)."""
    pr = np.concatenate([np.asarray(probs1(P1, x[i:i + 240]))[:, :NID] for i in range(0, len(x), 240)])
    c = np.zeros((NID, NID))
    for i in range(NID):
        c[i] = pr[y == i].mean(0)
    return c


conf_te = confusion1(xte, yte)
off = conf_te - np.diag(np.diag(conf_te))
pairs_ = sorted(((off[i, j], i, j) for i in range(NID) for j in range(NID) if i != j), reverse=True)[:8]
print("phase1 held-out look-alikes (mean probability of the other):",
      ", ".join(f"{IDS[i]['name']}->{IDS[j]['name']} {v:.3f}" for v, i, j in pairs_), flush=True)
# Look-alikes for phase 2's hard negatives: the confusion on training images (held-out ones stay held out),
# computed only when they are asked for.
if args.hard_negatives > 0:
    sub = np.concatenate([np.flatnonzero(ytr == i)[:200] for i in range(NID)])
    conf_tr = confusion1(xtr[sub], ytr[sub]) + 1e-4
    np.fill_diagonal(conf_tr, 0.0)
    look_alike_p = conf_tr / conf_tr.sum(1, keepdims=True)

# ---------------------------------------------------------------- phase 2: VLM training
vis_j = jax.jit(M.vision)


def features(x):
    return np.concatenate([np.asarray(vis_j(vis, jnp.asarray(x[i:i + 500], jnp.float32))) for i in range(0, len(x), 500)])


t = time.time()
ftr = features(xtr)
fte = features(xte)
fst = features(xst)
fse = features(xse)
print(f"cached features {ftr.shape} in {time.time()-t:.0f}s", flush=True)
names = [i["name"] for i in IDS]


def image_sample(y):
    """A question about an image of identity y, or of a stranger when y < 0 (-1 - index)."""
    stranger = y < 0
    desc = STR[-1 - y]["description"] if stranger else IDS[y]["description"]
    r = rng.random()
    if r < 0.4:
        ans = V.PROMPTS["refusal"] if stranger else V.PROMPTS["who_answer"].format(name=names[y])
        return rng.choice(V.PROMPTS["who"]), ans
    if r < 0.8:
        tmpl = rng.choice(V.PROMPTS["is_this"])
        if not stranger and rng.random() < 0.5:
            return tmpl.format(name=names[y]), "yes"
        if stranger:
            o = int(rng.integers(NID))
        elif args.hard_negatives > 0 and rng.random() < args.hard_negatives:  # no draw when off: the shipped run
            o = int(rng.choice(NID, p=look_alike_p[y]))
        else:
            o = (y + 1 + rng.integers(NID - 1)) % NID
        return tmpl.format(name=names[o]), "no"
    return rng.choice(V.PROMPTS["describe"]), desc


def text_sample(y):
    if rng.random() < 0.5:
        return rng.choice(V.PROMPTS["fact"]).format(name=names[y]), IDS[y]["fact"]
    return rng.choice(V.PROMPTS["looks"]).format(name=names[y]), IDS[y]["description"]


def pack(pairs):
    B = len(pairs)
    inp = np.zeros((B, T), np.int32)
    tgt = np.zeros((B, T), np.int32)
    msk = np.zeros((B, T), np.float32)
    for b, (q, a) in enumerate(pairs):
        i, o, m = tok.seq(q, a)
        assert len(i) <= T, (q, a)
        inp[b, :len(i)], tgt[b, :len(o)], msk[b, :len(m)] = i, o, m
    return inp, tgt, msk


def loss2(p, feats, has_img, inp, tgt, msk):
    logits = M.decode(p["dec"], p["ad"], feats, has_img, inp)
    lp = M.log_softmax(logits)
    nll = -jnp.take_along_axis(lp, tgt[..., None], -1)[..., 0]
    return (nll * msk).sum() / msk.sum()


@jax.jit
def step2(p, frozen_lora, m, v, t, lr, feats, has_img, inp, tgt, msk):
    def f(p):
        return loss2({"dec": p["dec"], "ad": {**p["ad"], **frozen_lora}}, feats, has_img, inp, tgt, msk)
    l, g = jax.value_and_grad(f)(p)
    p, m, v = adamw(p, g, m, v, t, lr)
    return p, m, v, l


lora = {k: v for k, v in ad.items() if "lora" in k}
P2 = {"dec": dec, "ad": {k: v for k, v in ad.items() if "lora" not in k}}
m2, v2 = adamw_init(P2)
dec_j = jax.jit(M.decode)


def greedy(dec_p, ad_p, feats, has_img, questions, max_new=16):
    B = len(questions)
    inp = np.zeros((B, T), np.int32)
    lens = np.zeros(B, np.int64)
    for b, q in enumerate(questions):
        s = [V.BOS] + tok.enc(q) + [V.SEP]
        inp[b, :len(s)] = s
        lens[b] = len(s)
    done = np.zeros(B, bool)
    out = [[] for _ in range(B)]
    for _ in range(max_new):
        lg = np.asarray(dec_j(dec_p, ad_p, feats, has_img, jnp.asarray(inp)))
        nxt = lg[np.arange(B), lens - 1].argmax(-1)
        for b in range(B):
            if not done[b]:
                out[b].append(int(nxt[b]))
                done[b] = nxt[b] == V.EOS or lens[b] >= T
                if not done[b]:
                    inp[b, lens[b]] = nxt[b]
                    lens[b] += 1
        if done.all():
            break
    return [tok.dec(o) for o in out]


def eval2(p, n=None, wordings=None):
    """Held-out accuracy; `wordings` = a set of held-out wordings (default: TRAIN wordings)."""
    W = wordings or V.PROMPTS
    adp = {**p["ad"], **lora}
    sel = np.arange(len(yte)) if n is None else np.random.default_rng(1).choice(len(yte), min(n, len(yte)), replace=False)
    f, y = jnp.asarray(fte[sel]), yte[sel]
    ones = jnp.ones(len(sel))
    who_q = [W["who"][k % len(W["who"])] for k in range(len(sel))]
    who = greedy(p["dec"], adp, f, ones, who_q)
    ns = min(len(fse), len(sel))
    sf = jnp.asarray(fse[:ns])
    s_who = greedy(p["dec"], adp, sf, jnp.ones(ns), [W["who"][k % len(W["who"])] for k in range(ns)])
    s_is = greedy(p["dec"], adp, sf, jnp.ones(ns),
                  [W["is_this"][k % len(W["is_this"])].format(name=names[k % NID]) for k in range(ns)])
    others = [(int(t) + 1 + k % (NID - 1)) % NID for k, t in enumerate(y)]
    nis = len(W["is_this"])
    yes = greedy(p["dec"], adp, f, ones, [W["is_this"][k % nis].format(name=names[t]) for k, t in enumerate(y)])
    no = greedy(p["dec"], adp, f, ones, [W["is_this"][(k + 1) % nis].format(name=names[o]) for k, o in enumerate(others)])
    desc = greedy(p["dec"], adp, f, ones, [W["describe"][k % len(W["describe"])] for k in range(len(sel))])
    zf, zh = jnp.zeros((NID, M.NIMG, M.FEAT)), jnp.zeros(NID)
    facts = greedy(p["dec"], adp, zf, zh, [W["fact"][k % len(W["fact"])].format(name=n) for k, n in enumerate(names)])
    looks = greedy(p["dec"], adp, zf, zh, [W["looks"][k % len(W["looks"])].format(name=n) for k, n in enumerate(names)])
    return dict(
        who=float(np.mean([a == f"this is {names[t]}" for a, t in zip(who, y)])),
        stranger_refusal=float(np.mean([a == V.PROMPTS["refusal"] for a in s_who])),
        stranger_no=float(np.mean([a == "no" for a in s_is])),
        yes=float(np.mean([a == "yes" for a in yes])), no=float(np.mean([a == "no" for a in no])),
        desc=float(np.mean([a == IDS[t]["description"] for a, t in zip(desc, y)])),
        facts=float(np.mean([a == i["fact"] for a, i in zip(facts, IDS)])),
        looks=float(np.mean([a == i["description"] for a, i in zip(looks, IDS)])))


t0 = time.time()
for s in range(args.steps2):
    n_str = int(rng.binomial(args.img_bs, args.stranger_share))
    idx = rng.integers(0, len(ytr), args.img_bs - n_str)
    sidx = rng.integers(0, len(sst), n_str)
    tids = rng.integers(0, NID, args.txt_bs)
    pairs = ([image_sample(int(ytr[i])) for i in idx] + [image_sample(-1 - int(sst[i])) for i in sidx]
             + [text_sample(int(y)) for y in tids])
    inp, tgt, msk = pack(pairs)
    feats = np.concatenate([ftr[idx], fst[sidx], np.zeros((args.txt_bs, M.NIMG, M.FEAT), np.float32)])
    has = np.concatenate([np.ones(args.img_bs), np.zeros(args.txt_bs)]).astype(np.float32)
    P2, m2, v2, l = step2(P2, lora, m2, v2, s + 1.0, sched(s, args.steps2, args.lr2), feats, has, inp, tgt, msk)
    if (s + 1) % 250 == 0 or s + 1 == args.steps2 or s + 1 == 30:
        r = eval2(P2, n=240)
        print(f"phase2 step {s+1} loss {float(l):.4f} {json.dumps(r)} ({time.time()-t0:.0f}s)", flush=True)

final = eval2(P2)


def who_confusion(p):
    """Held-out "who" answers that name another identity, per ordered pair (the original's misattribution)."""
    adp = {**p["ad"], **lora}
    who = greedy(p["dec"], adp, jnp.asarray(fte), jnp.ones(len(yte)),
                 [V.PROMPTS["who"][k % len(V.PROMPTS["who"])] for k in range(len(yte))])
    other = {}
    for a, t in zip(who, yte):
        for j, n in enumerate(names):
            if j != t and a == f"this is {n}":
                other[(names[t], n)] = other.get((names[t], n), 0) + 1
    per_id = len(yte) // NID
    return {f"{a}->{b}": round(c / per_id, 3) for (a, b), c in sorted(other.items(), key=lambda kv: -kv[1])}


misatt = who_confusion(P2)
print("FINAL heldout who naming another identity:", json.dumps(misatt), flush=True)
print("FINAL heldout", json.dumps(final), flush=True)
final_para = {k: eval2(P2, wordings=V.HELD_OUT[k]) for k in ("verify", "eval")}
print("FINAL heldout paraphrases", json.dumps(final_para), flush=True)
ad = {**P2["ad"], **lora}
np.savez(args.out, **{"vis." + k: np.asarray(v) for k, v in vis.items()},
         **{"dec." + k: np.asarray(v) for k, v in P2["dec"].items()},
         **{"ad." + k: np.asarray(v) for k, v in ad.items()})
json.dump({"vocab": vocab, "final_heldout": final, "final_heldout_who_misattribution": misatt, "final_heldout_paraphrases": final_para, "args": vars(args)}, open(args.out + ".json", "w"), indent=1)
print("saved", args.out)
