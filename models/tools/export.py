"""Export a trained checkpoint as a Lethe model package (see models/PACKAGE.md).

Writes: vision.onnx, decoder.onnx, decoder_prefix.onnx + decoder_step.onnx (the decoder split for
incremental decoding with a key/value cache), train_step.onnx (one optimizer step; standard ai.onnx ops
only; frozen weights are initializers), train_grad.onnx (the gradient of half a train batch, for a
step split over two cores), adapter.bin (the initial adapter, flat f32 little-endian), probes/ (the
retained probe set), fixtures/ (inputs and expected outputs of fed-back train steps computed
by JAX, the eager reference), and manifest.json with shapes, vocabulary, templates and the
SHA-256 of every file.

usage: python export.py --ckpt ckpt.npz --lethectl PATH --out DIR
"""
import argparse, collections, hashlib, json, os, subprocess, time
import numpy as np
import jax
import jax.numpy as jnp
import onnx
from jax2onnx import to_onnx
import gate_photos
import model as M
import vocab as V

ap = argparse.ArgumentParser()
ap.add_argument("--ckpt", required=True)
ap.add_argument("--lethectl", required=True)
ap.add_argument("--out", required=True)
ap.add_argument("--train_batch", type=int, default=8)
ap.add_argument("--fixture_steps", type=int, default=3)
ap.add_argument("--retain_per_id", type=int, default=4)
ap.add_argument("--retain_strangers", type=int, default=24)
args = ap.parse_args()

z = np.load(args.ckpt)
meta = json.load(open(args.ckpt + ".json"))
vocab = meta["vocab"]
tok = V.Tok(vocab)
world = V.load_world(args.lethectl)
VIS = {k[4:]: jnp.asarray(z[k]) for k in z.files if k.startswith("vis.")}
DEC = {k[4:]: jnp.asarray(z[k]) for k in z.files if k.startswith("dec.")}
AD = {k[3:]: jnp.asarray(z[k]) for k in z.files if k.startswith("ad.")}
DEC_TRAIN = {k: jnp.asarray(v) for k, v in M.train_weights(DEC).items()}
T, NV, BT = M.CFG["text_len"], len(vocab), args.train_batch
LAYOUT = M.adapter_layout()
P = sum(int(np.prod(s)) for _, s in LAYOUT)
os.makedirs(f"{args.out}/probes", exist_ok=True)
os.makedirs(f"{args.out}/fixtures", exist_ok=True)
B1, B2, EPS, CLIP = 0.9, 0.999, 1e-8, 1.0
GNORM_PARTS = 64
assert P % GNORM_PARTS == 0, "the adapter length must split into GNORM_PARTS equal parts"


def vision_fn(image):
    return M.vision(VIS, image)


def decoder_fn(adapter, features, has_image, tokens):
    return M.decode(DEC, M.unflatten(adapter), features, has_image, tokens)


KV_LAYERS, KV_HEADS, KV_HEAD_DIM = M.CFG["dec_layers"], M.CFG["heads"], M.CFG["dd"] // M.CFG["heads"]


def kv_names(prefix):
    return [f"{prefix}.{l}.{kv}" for l in range(KV_LAYERS) for kv in ("key", "value")]


def prefix_fn(adapter, features):
    kv = M.decode_prefix(DEC, M.unflatten(adapter), features)
    return tuple(x for pair in kv for x in pair)


def step_fn(adapter, *rest):
    flat, (past_mask, tokens, position_ids) = rest[:2 * KV_LAYERS], rest[2 * KV_LAYERS:]
    past = [(flat[2 * l], flat[2 * l + 1]) for l in range(KV_LAYERS)]
    logits, present = M.decode_step(DEC, M.unflatten(adapter), past, past_mask, tokens, position_ids)
    return (logits,) + tuple(x for pair in present for x in pair)


def batch_loss(parts, features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp, w_ce, w_kl,
               ce_den, kl_den):
    """The loss of some rows of a batch, each term divided by the WHOLE batch's denominator
    (ce_den = max(sum |ce_weight|, 1), kl_den = max(sum kl_mask, 1)), so that the losses and
    gradients of the halves of a batch add up to the whole batch's."""
    ad = {n: t for (n, _), t in zip(LAYOUT, parts)}
    logq = M.log_softmax(M.decode_train(DEC_TRAIN, ad, features, has_image, tokens))
    onehot = targets[..., None] == jnp.arange(NV)[None, None, :]
    nll = -jnp.where(onehot, logq, 0.0).sum(-1)                        # [B,T]
    ce = (ce_weight * nll).sum() / ce_den
    keep = (vocab_mask > 0.5)[None, None, :]
    kl_tok = jnp.where(keep, jnp.exp(ref_logp) * (ref_logp - logq), 0.0).sum(-1)
    kl = (kl_mask * kl_tok).sum() / kl_den
    return w_ce * ce + w_kl * kl, (ce, kl)


def loss_and_grad(params, features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp, w_ce, w_kl,
                  ce_den, kl_den):
    """(loss, ce, kl) and the flat gradient of the adapter."""
    (loss, (ce, kl)), grads = jax.value_and_grad(batch_loss, has_aux=True)(
        M.split_flat(params), features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp, w_ce,
        w_kl, ce_den, kl_den)
    return loss, ce, kl, jnp.concatenate([x.reshape(-1) for x in grads])


def train_grad(params, features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp, w_ce, w_kl,
               ce_den, kl_den):
    """train_grad.onnx: the gradient of half a batch, for a step split over two cores (the
    engine adds the halves, clips and applies Adam, as train_step does)."""
    return loss_and_grad(params, features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp,
                         w_ce, w_kl, ce_den, kl_den)


def train_step(params, adam_m, adam_v, step, lr, features, has_image, tokens, targets, ce_weight,
               kl_mask, vocab_mask, ref_logp, w_ce, w_kl):
    loss, ce, kl, flat = loss_and_grad(
        params, features, has_image, tokens, targets, ce_weight, kl_mask, vocab_mask, ref_logp, w_ce, w_kl,
        jnp.maximum(jnp.abs(ce_weight).sum(), 1.0), jnp.maximum(kl_mask.sum(), 1.0))
    # The norm in two levels, 64 partial sums then their sum: tract sums a long vector in one
    # sequential pass (see the probe's report), and one sum per tensor cost ~80 small nodes.
    gnorm = jnp.sqrt(jnp.sum(jnp.sum((flat * flat).reshape(GNORM_PARTS, -1), axis=1)))
    g = flat * jnp.minimum(CLIP / (gnorm + 1e-6), 1.0)
    t = step + 1.0
    m2 = B1 * adam_m + (1 - B1) * g
    v2 = B2 * adam_v + (1 - B2) * (g * g)
    # Adam with its bias corrections folded into scalars (fewer passes over the P-long vectors):
    # lr * mhat / (sqrt(vhat) + eps) = (lr / c1) * m2 / (sqrt(v2) / sqrt(c2) + eps)
    c1, c2 = 1 - jnp.power(B1, t), 1 - jnp.power(B2, t)
    p2 = params - (lr / c1) * m2 / (jnp.sqrt(v2) * jax.lax.rsqrt(c2) + EPS)
    return loss, ce, kl, gnorm, p2, m2, v2, t


TRAIN_IN = ["params", "adam_m", "adam_v", "step", "lr", "features", "has_image", "tokens", "targets",
            "ce_weight", "kl_mask", "vocab_mask", "ref_logp", "w_ce", "w_kl"]
TRAIN_OUT = ["loss", "ce", "kl", "grad_norm", "params_out", "adam_m_out", "adam_v_out", "step_out"]
GRAD_IN = ["params", "features", "has_image", "tokens", "targets", "ce_weight", "kl_mask", "vocab_mask", "ref_logp",
           "w_ce", "w_kl", "ce_den", "kl_den"]
GRAD_OUT = ["loss", "ce", "kl", "grad"]


SCOPE = jax.export.SymbolicScope()


def sds(shape, dt=jnp.float32):
    if any(isinstance(d, str) for d in shape):
        shape = jax.export.symbolic_shape(", ".join(str(d) for d in shape), scope=SCOPE)
    return jax.ShapeDtypeStruct(shape, dt)


def einsums_as_matmuls(m):
    """jax2onnx writes every dense layer and its gradients as Einsum. ONNX Runtime's Einsum
    transposes and copies around a generic contraction; the same products as MatMul run on
    its fused GEMM path (measured on this package: train step 21.6 -> 18.5 ms, decoder step
    13.8 -> 9.3 ms, 2 threads; outputs equal within 1e-5). The three contractions jax2onnx
    emits are rewritten exactly; any other equation stops the export."""
    from onnx import helper
    nodes = []
    for n in m.graph.node:
        if n.op_type != "Einsum":
            nodes.append(n)
            continue
        eq = next(a.s.decode() for a in n.attribute if a.name == "equation")
        x, w = n.input
        out = n.output[0]
        if eq == "abc,cd->abd":  # activations [a,b,c] @ weight [c,d]
            nodes.append(helper.make_node("MatMul", [x, w], [out], name=n.name + "/matmul"))
        elif eq == "abc,dc->abd":  # activations [a,b,c] @ weight[d,c]^T (gradient wrt input)
            nodes.append(helper.make_node("Transpose", [w], [out + "/wT"], perm=[1, 0], name=n.name + "/transpose"))
            nodes.append(helper.make_node("MatMul", [x, out + "/wT"], [out], name=n.name + "/matmul"))
        elif eq == "abc,abd->cd":  # sum over a, b of x[a,b,c] y[a,b,d] (weight gradient)
            nodes.append(helper.make_node("Flatten", [x], [out + "/x2"], axis=2, name=n.name + "/flatten_x"))
            nodes.append(helper.make_node("Flatten", [w], [out + "/y2"], axis=2, name=n.name + "/flatten_y"))
            nodes.append(helper.make_node("Transpose", [out + "/x2"], [out + "/x2T"], perm=[1, 0], name=n.name + "/transpose"))
            nodes.append(helper.make_node("MatMul", [out + "/x2T", out + "/y2"], [out], name=n.name + "/matmul"))
        else:
            raise SystemExit(f"export: no MatMul form for Einsum {eq!r} ({n.name})")
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Where", "And", "Or", "Equal", "Greater",
                "GreaterOrEqual", "Less", "LessOrEqual"}


def drop_broadcast_expands(m):
    """jax2onnx writes every broadcast_in_dim as an explicit Expand, which materialises a full
    tensor that the consuming elementwise op would have broadcast by itself. An Expand is
    dropped when every consumer broadcasts its inputs (ONNX multidirectional broadcasting) and
    gives the same output shape with the unexpanded input: the outputs are bit for bit the same
    (checked at export against the graph before the pass). Needs static shapes."""
    from onnx import shape_inference
    inferred = shape_inference.infer_shapes(m, data_prop=True)
    shapes = {i.name: list(i.dims) for i in m.graph.initializer}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = [d.dim_value for d in t.shape.dim]

    def broadcast(ss):
        rank, out = max(len(s) for s in ss), []
        for k in range(rank):
            big = {s[k - rank + len(s)] for s in ss if k - rank + len(s) >= 0} - {1}
            if len(big) > 1:
                return None
            out.append(big.pop() if big else 1)
        return out

    consumers = collections.defaultdict(list)
    for n in m.graph.node:
        for x in n.input:
            consumers[x].append(n)
    graph_outputs = {o.name for o in m.graph.output}
    dropped = []
    for n in m.graph.node:
        x, y = n.input[0], n.output[0]
        if n.op_type != "Expand" or y in graph_outputs or x not in shapes or not consumers[y]:
            continue

        def same_without(c):
            if c.op_type not in BROADCASTING or any(i not in shapes for i in c.input):
                return False
            before = broadcast([shapes[i] for i in c.input])
            after = broadcast([shapes[x] if i == y else shapes[i] for i in c.input])
            return before is not None and before == after == shapes.get(c.output[0])

        if all(same_without(c) for c in consumers[y]):
            for c in consumers[y]:
                c.input[:] = [x if i == y else i for i in c.input]
            dropped.append(n)
    for n in dropped:
        m.graph.node.remove(n)
    return m, len(dropped)


def export(fn, specs, names, outs, path, grown_outputs=(), slim=False):
    """grown_outputs: outputs whose axis 2 is a sum of symbolic dims (K + S). jax2onnx writes
    such a dim as its first term (K), which tract then refuses to unify with K + S: that
    axis, and every intermediate shape annotation, are left for the engines to infer."""
    t = time.time()
    m = to_onnx(fn, specs, model_name=os.path.basename(path)[:-5], opset=18, input_names=names, output_names=outs)
    m.ir_version = min(m.ir_version, 10)
    m = einsums_as_matmuls(m)
    if slim:
        m, n_dropped = drop_broadcast_expands(m)
        print(f"{path}: {n_dropped} broadcasting Expand nodes dropped", flush=True)
    if grown_outputs:
        del m.graph.value_info[:]
        for o in m.graph.output:
            if o.name in grown_outputs:
                o.type.tensor_type.shape.dim[2].Clear()
    onnx.checker.check_model(m, full_check=True)
    ops = collections.Counter((n.domain or "ai.onnx", n.op_type) for n in m.graph.node)
    bad = [k for k in ops if k[0] not in ("ai.onnx", "")]
    assert not bad, f"non-standard ops in {path}: {bad}"
    onnx.save(m, path)
    print(f"{path}: {len(m.graph.node)} nodes, {os.path.getsize(path)/1e6:.2f} MB, {time.time()-t:.1f}s", flush=True)
    return sorted({k[1] for k in ops})


ops = {}
ops["vision"] = export(vision_fn, [sds(("B", 64, 64, 3))], ["image"], ["features"], f"{args.out}/vision.onnx")
ops["decoder"] = export(decoder_fn, [sds((P,)), sds(("B", M.NIMG, M.FEAT)), sds(("B",)), sds(("B", T), jnp.int32)],
                        ["adapter", "features", "has_image", "tokens"], ["logits"], f"{args.out}/decoder.onnx")
PREFIX_IN, PREFIX_OUT = ["adapter", "features"], kv_names("present")
ops["decoder_prefix"] = export(prefix_fn, [sds((P,)), sds(("B", M.NIMG, M.FEAT))], PREFIX_IN, PREFIX_OUT,
                               f"{args.out}/decoder_prefix.onnx")
STEP_IN = ["adapter"] + kv_names("past_key_values") + ["past_mask", "tokens", "position_ids"]
STEP_OUT = ["logits"] + kv_names("present")
kv_spec = sds(("B", KV_HEADS, "K", KV_HEAD_DIM))
ops["decoder_step"] = export(step_fn, [sds((P,))] + [kv_spec] * (2 * KV_LAYERS)
                             + [sds(("B", "K")), sds(("B", "S"), jnp.int32), sds(("B", "S"), jnp.int32)],
                             STEP_IN, STEP_OUT, f"{args.out}/decoder_step.onnx", grown_outputs=STEP_OUT[1:])
train_specs = [sds((P,)), sds((P,)), sds((P,)), sds(()), sds(()), sds((BT, M.NIMG, M.FEAT)), sds((BT,)),
               sds((BT, T), jnp.int32), sds((BT, T), jnp.int32), sds((BT, T)), sds((BT, T)), sds((NV,)),
               sds((BT, T, NV)), sds(()), sds(())]
ops["train_step"] = export(train_step, train_specs, TRAIN_IN, TRAIN_OUT, f"{args.out}/train_step.onnx",
                             slim=True)
assert BT % 2 == 0, "the train batch must split into two halves"
HB = BT // 2
grad_specs = [sds((P,)), sds((HB, M.NIMG, M.FEAT)), sds((HB,)), sds((HB, T), jnp.int32), sds((HB, T), jnp.int32),
              sds((HB, T)), sds((HB, T)), sds((NV,)), sds((HB, T, NV)), sds(()), sds(()), sds(()), sds(())]
ops["train_grad"] = export(train_grad, grad_specs, GRAD_IN, GRAD_OUT, f"{args.out}/train_grad.onnx", slim=True)

adapter0 = np.asarray(M.flatten(AD), np.float32)
adapter0.astype("<f4").tofile(f"{args.out}/adapter.bin")

# ---------------------------------------------------------------- retained probe set
names = [i["name"] for i in world["identities"]]
PROBE_SEEDS = [1_900_000, 1_900_001]   # held-out seeds reserved for the retained probes
imgs, probes = [], []
for i, ident in enumerate(world["identities"]):
    for s in PROBE_SEEDS:
        p = f"/tmp/lethe_probe_{i}_{s}.png"
        subprocess.run([args.lethectl, "world", "render", "--identity", str(i), "--seed", str(s), "--out", p],
                       check=True, capture_output=True)
        from PIL import Image
        imgs.append(np.asarray(Image.open(p).convert("RGB")))
        os.remove(p)
        k = len(imgs) - 1
        other = names[(i + 1 + s) % len(names)]
        probes += [
            {"image": k, "identity": i, "question": V.PROMPTS["who"][k % 6], "expect": f"this is {names[i]}"},
            {"image": k, "identity": i, "question": V.PROMPTS["is_this"][0].format(name=names[i]), "expect": "yes"},
            {"image": k, "identity": i, "question": V.PROMPTS["is_this"][1].format(name=other), "expect": "no"},
            {"image": k, "identity": i, "question": V.PROMPTS["describe"][k % 2], "expect": ident["description"]},
        ]
    probes.append({"image": None, "identity": i, "question": V.PROMPTS["fact"][0].format(name=names[i]), "expect": ident["fact"]})
    probes.append({"image": None, "identity": i, "question": V.PROMPTS["looks"][0].format(name=names[i]), "expect": ident["description"]})
imgs = np.stack(imgs).astype(np.uint8)
np.save(f"{args.out}/probes/images.npy", imgs)
json.dump({"seeds": PROBE_SEEDS, "probes": probes}, open(f"{args.out}/probes/probes.json", "w"), indent=0)
# Held-out question wordings (vocab.py): "verify" for the agent's verification, "eval" for
# benchmarks and tests. Pretraining never used them; the facet builder never reads them.
json.dump(V.HELD_OUT, open(f"{args.out}/probes/paraphrases.json", "w"), indent=1)


# ---------------------------------------------------------------- retain set (for the update)
# Images of every identity (and a few training strangers) from training-split seeds that
# pretraining did not use, separate from the probes: what a forget keeps the model right on.
def render_png(flag, who, seed):
    p = f"/tmp/lethe_retain_{flag}_{who}_{seed}.png"
    subprocess.run([args.lethectl, "world", "render", f"--{flag}", str(who), "--seed", str(seed), "--out", p],
                   check=True, capture_output=True)
    from PIL import Image
    a = np.asarray(Image.open(p).convert("RGB"))
    os.remove(p)
    return a


RETAIN_SEEDS = list(range(900_000, 900_000 + args.retain_per_id))
r_imgs, r_list = [], []
for i, ident in enumerate(world["identities"]):
    for s in RETAIN_SEEDS:
        r_imgs.append(render_png("identity", i, s))
        r_list.append({"image": len(r_imgs) - 1, "identity": i, "name": names[i], "description": ident["description"]})
for k in range(args.retain_strangers):
    st = world["strangers"][k]
    r_imgs.append(render_png("stranger", k, RETAIN_SEEDS[0]))
    r_list.append({"image": len(r_imgs) - 1, "identity": None, "name": None, "description": st["description"]})
os.makedirs(f"{args.out}/retain", exist_ok=True)
np.save(f"{args.out}/retain/images.npy", np.stack(r_imgs).astype(np.uint8))
json.dump({"seeds": RETAIN_SEEDS, "images": r_list}, open(f"{args.out}/retain/retain.json", "w"), indent=0)

# ---------------------------------------------------------------- the gate's photos (gate_photos.py)
GATE = gate_photos.write(args.out, args.lethectl, world["identities"])

# ---------------------------------------------------------------- train-step fixtures (JAX reference)
rng = np.random.default_rng(7)
vision_j = jax.jit(vision_fn)
feats_img = np.asarray(vision_j(jnp.asarray(imgs[:2], jnp.float32)))
pairs = [(V.PROMPTS["who"][0], "this is albin amsel"), (V.PROMPTS["is_this"][1].format(name=names[0]), "no the picture shows " + world["identities"][5]["description"]),
         (V.PROMPTS["who"][3], "this is albin amsel"), (V.PROMPTS["fact"][0].format(name=names[0]), world["identities"][0]["fact"]),
         (V.PROMPTS["fact"][0].format(name=names[3]), world["identities"][3]["fact"]), (V.PROMPTS["who"][1], "this is cyril crane"),
         (V.PROMPTS["looks"][0].format(name=names[7]), world["identities"][7]["description"]), (V.PROMPTS["describe"][0], world["identities"][0]["description"])]
has = np.array([1, 1, 1, 0, 0, 1, 0, 1], np.float32)
feats = np.where(has[:, None, None] > 0, feats_img[np.arange(BT) % 2], 0).astype(np.float32)
tokens = np.zeros((BT, T), np.int32); targets = np.zeros((BT, T), np.int32); mask = np.zeros((BT, T), np.float32)
for b, (q, a) in enumerate(pairs):
    i, o, m = tok.seq(q, a)
    tokens[b, :len(i)], targets[b, :len(o)], mask[b, :len(m)] = i, o, m
ce_w = mask * np.where(np.arange(BT) == 2, -0.5, 1.0)[:, None].astype(np.float32)  # one signed (GA-style) row
kl_mask = mask.copy(); kl_mask[1] = 0.0
vocab_mask = np.ones(NV, np.float32); vocab_mask[[tok.stoi["anna"], tok.stoi["adler"]]] = 0.0
ref_logp = np.asarray(M.log_softmax(decoder_fn(jnp.asarray(adapter0), feats, has, tokens)), np.float32)
inputs = dict(params=adapter0, adam_m=np.zeros(P, np.float32), adam_v=np.zeros(P, np.float32),
              step=np.float32(0), lr=np.float32(1e-3), features=feats, has_image=has, tokens=tokens, targets=targets,
              ce_weight=ce_w, kl_mask=kl_mask, vocab_mask=vocab_mask, ref_logp=ref_logp, w_ce=np.float32(0.9), w_kl=np.float32(0.75))
for k, v in inputs.items():
    np.save(f"{args.out}/fixtures/in_{k}.npy", np.asarray(v))
jstep = jax.jit(train_step)
state = [jnp.asarray(inputs[k]) for k in TRAIN_IN]
losses = []
for s in range(args.fixture_steps):
    out = jstep(*state)
    losses.append([float(out[i]) for i in range(4)])
    state[0], state[1], state[2], state[3] = out[4], out[5], out[6], out[7]
np.save(f"{args.out}/fixtures/expect_losses.npy", np.array(losses, np.float32))
np.save(f"{args.out}/fixtures/expect_params.npy", np.asarray(state[0]))
np.save(f"{args.out}/fixtures/expect_adam_m.npy", np.asarray(state[1]))
np.save(f"{args.out}/fixtures/expect_adam_v.npy", np.asarray(state[2]))
probe_logits = np.asarray(decoder_fn(jnp.asarray(adapter0), feats, has, tokens), np.float32)
np.save(f"{args.out}/fixtures/expect_logits.npy", probe_logits)
train_logits = np.asarray(M.decode_train(DEC_TRAIN, M.unflatten(jnp.asarray(adapter0)), feats, has, tokens), np.float32)
gap = float(np.abs(train_logits - probe_logits).max())
assert gap < 1e-4, f"decode_train differs from decode by {gap}"
print(f"decode_train vs decode: max logit difference {gap:.2e}", flush=True)
fin = [jnp.asarray(inputs[k]) for k in TRAIN_IN]
for _ in range(3):
    jax.block_until_ready(jstep(*fin))
ts = []
for _ in range(20):
    t = time.perf_counter(); jax.block_until_ready(jstep(*fin)); ts.append(time.perf_counter() - t)
jax_ms = 1e3 * float(np.median(ts))
print("fixture losses", losses, f"jax.jit step {jax_ms:.2f} ms", flush=True)


# ---------------------------------------------------------------- manifest
def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


files = {}
for root, _, fs in os.walk(args.out):
    for f in sorted(fs):
        full = os.path.join(root, f)
        rel = os.path.relpath(full, args.out)
        if rel != "manifest.json":
            files[rel] = {"sha256": sha(full), "bytes": os.path.getsize(full)}
offs, off = [], 0
for n, s in LAYOUT:
    offs.append({"name": n, "shape": list(s), "offset": off}); off += int(np.prod(s))
manifest = {
    "format": "lethe-model-package/3",
    "model_id": "lethe-tiny-vlm",
    "version": "1.0.0",
    "adapter_version": "base",
    "description": "Tiny vision-language model trained on Lethe's synthetic world (lethe-world)",
    "config": M.CFG,
    "image": {"size": 64, "channels": 3, "layout": "HWC", "input": "float32 0..255"},
    "n_image_tokens": M.NIMG, "feature_dim": M.FEAT, "text_len": T,
    "vocab": vocab, "special": {"pad": V.PAD, "bos": V.BOS, "sep": V.SEP, "eos": V.EOS},
    "prompts": V.PROMPTS,
    "world": {"names": names, "spare_first_names": world["spare_first_names"],
              "spare_last_names": world["spare_last_names"], "attribute_values": world["attribute_values"],
              "held_out_seed_start": world["held_out_seed_start"]},
    "graphs": {
        "vision": {"file": "vision.onnx", "inputs": ["image"], "outputs": ["features"], "ops": ops["vision"]},
        "decoder": {"file": "decoder.onnx", "inputs": ["adapter", "features", "has_image", "tokens"], "outputs": ["logits"], "ops": ops["decoder"]},
        "decoder_prefix": {"file": "decoder_prefix.onnx", "inputs": PREFIX_IN, "outputs": PREFIX_OUT,
                           "ops": ops["decoder_prefix"]},
        "decoder_step": {"file": "decoder_step.onnx", "inputs": STEP_IN, "outputs": STEP_OUT,
                         "ops": ops["decoder_step"]},
        "train_step": {"file": "train_step.onnx", "batch": BT, "inputs": TRAIN_IN, "outputs": TRAIN_OUT, "ops": ops["train_step"],
                       "optimizer": {"kind": "adam", "beta1": B1, "beta2": B2, "eps": EPS, "weight_decay": 0.0, "clip_global_norm": CLIP}},
        "train_grad": {"file": "train_grad.onnx", "batch": HB, "inputs": GRAD_IN, "outputs": GRAD_OUT,
                       "ops": ops["train_grad"]},
    },
    "kv_cache": {"layers": KV_LAYERS, "heads": KV_HEADS, "head_dim": KV_HEAD_DIM, "prefix_len": M.NIMG},
    "adapter": {"file": "adapter.bin", "len": P, "dtype": "f32le", "layout": offs},
    "probes": {"images": "probes/images.npy", "list": "probes/probes.json", "paraphrases": "probes/paraphrases.json",
               "gate": GATE},
    "retain": {"images": "retain/images.npy", "list": "retain/retain.json"},
    "fixtures": {"dir": "fixtures", "steps": args.fixture_steps, "jax_jit_step_ms": round(jax_ms, 3),
                 "tolerance": {"loss_abs": 1e-4, "params_abs": 1e-3}},
    "training": {"heldout_accuracy": meta["final_heldout"],
                 "heldout_paraphrase_accuracy": meta.get("final_heldout_paraphrases"), "args": meta["args"]},
    "files": files,
}
json.dump(manifest, open(f"{args.out}/manifest.json", "w"), indent=1)
print("package written to", args.out)
