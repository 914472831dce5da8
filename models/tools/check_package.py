"""Check an exported package with ONNX Runtime (Python): dynamic batch of the inference graphs,
the KV-cache graphs against the whole decoder, and the train-step graph against the JAX fixtures. A packaging-time sanity check; the Rust
tests repeat the fixture check with ort and tract.

usage: python check_package.py DIR
"""
import json, sys
import numpy as np
import onnxruntime as ort

d = sys.argv[1]
man = json.load(open(f"{d}/manifest.json"))
so = ort.SessionOptions(); so.intra_op_num_threads = 2
S = lambda f: ort.InferenceSession(f"{d}/{f}", so, providers=["CPUExecutionProvider"])
vis, dec, step = S("vision.onnx"), S("decoder.onnx"), S("train_step.onnx")
imgs = np.load(f"{d}/probes/images.npy").astype(np.float32)
adapter = np.fromfile(f"{d}/adapter.bin", "<f4")
for B in (1, 5):
    f = vis.run(None, {"image": imgs[:B]})[0]
    toks = np.zeros((B, man["text_len"]), np.int32); toks[:, 0] = 1
    lg = dec.run(None, {"adapter": adapter, "features": f, "has_image": np.ones(B, np.float32), "tokens": toks})[0]
    print(f"batch {B}: features {f.shape} logits {lg.shape}")
fx = f"{d}/fixtures"
names = man["graphs"]["train_step"]["inputs"]
feed = {n: np.load(f"{fx}/in_{n}.npy") for n in names}
lg = dec.run(None, {k: feed[k] for k in ("features", "has_image", "tokens")} | {"adapter": feed["params"]})[0]
print("decoder vs jax logits max diff %.2e" % np.abs(lg - np.load(f"{fx}/expect_logits.npy")).max())
losses = []
for s in range(man["fixtures"]["steps"]):
    o = step.run(None, feed)
    losses.append(o[:4])
    feed["params"], feed["adam_m"], feed["adam_v"], feed["step"] = o[4], o[5], o[6], o[7]
el = np.load(f"{fx}/expect_losses.npy")
print("train step: max |loss - jax| %.2e, max |params - jax| %.2e" % (
    np.abs(np.array(losses, np.float32) - el).max(), np.abs(feed["params"] - np.load(f"{fx}/expect_params.npy")).max()))

# The step split over two cores: train_grad.onnx on each half batch, the halves added, then the
# clip and Adam that train_step does (as lethe-model's DataParallel step does them in Rust).
if "train_grad" in man["graphs"]:
    grad, opt = S("train_grad.onnx"), man["graphs"]["train_step"]["optimizer"]
    hb = man["graphs"]["train_grad"]["batch"]
    feed = {n: np.load(f"{fx}/in_{n}.npy") for n in names}
    dens = {"ce_den": np.array(max(np.abs(feed["ce_weight"]).sum(), 1.0), np.float32),
            "kl_den": np.array(max(feed["kl_mask"].sum(), 1.0), np.float32)}
    losses = []
    for s in range(man["fixtures"]["steps"]):
        outs = []
        for h in range(2):
            rows = slice(h * hb, (h + 1) * hb)
            per_row = {"features", "has_image", "tokens", "targets", "ce_weight", "kl_mask", "ref_logp"}
            hf = {n: feed[n][rows] if n in per_row else feed[n]
                  for n in man["graphs"]["train_grad"]["inputs"] if n in feed} | dens
            outs.append(grad.run(None, hf))
        loss, ce, kl = (outs[0][i] + outs[1][i] for i in range(3))
        g = outs[0][3] + outs[1][3]
        gn = np.sqrt(np.sum(g.astype(np.float64) ** 2)).astype(np.float32)
        g = g * min(opt["clip_global_norm"] / (gn + 1e-6), 1.0)
        t = feed["step"] + 1
        m2 = opt["beta1"] * feed["adam_m"] + (1 - opt["beta1"]) * g
        v2 = opt["beta2"] * feed["adam_v"] + (1 - opt["beta2"]) * g * g
        c1, c2 = 1 - opt["beta1"] ** t, 1 - opt["beta2"] ** t
        feed["params"] = (feed["params"] - (feed["lr"] / c1) * m2 / (np.sqrt(v2) / np.sqrt(c2) + opt["eps"])).astype(np.float32)
        feed["adam_m"], feed["adam_v"], feed["step"] = m2.astype(np.float32), v2.astype(np.float32), np.float32(t)
        losses.append([loss, ce, kl, gn])
    dl = np.abs(np.array(losses, np.float32) - el).max()
    dp = np.abs(feed["params"] - np.load(f"{fx}/expect_params.npy")).max()
    print("train_grad halves + Adam: max |loss - jax| %.2e, max |params - jax| %.2e" % (dl, dp))
    tol = man["fixtures"]["tolerance"]
    assert dl < tol["loss_abs"] and dp < tol["params_abs"], (dl, dp)

# The KV-cache pair: prefix + a 10-token step + one token at a time == the whole decoder.
pre, inc = S("decoder_prefix.onnx"), S("decoder_step.onnx")
kvn = man["graphs"]["decoder_step"]["inputs"][1:-3]
T, B = man["text_len"], 4
f = vis.run(None, {"image": imgs[:B]})[0]
has = np.array([1, 0, 1, 1], np.float32)
toks = np.random.default_rng(0).integers(4, len(man["vocab"]), (B, T)).astype(np.int32)
want = dec.run(None, {"adapter": adapter, "features": f, "has_image": has, "tokens": toks})[0]
past = pre.run(None, {"adapter": adapter, "features": f})
mask = np.repeat(has[:, None], man["n_image_tokens"], 1)
pos = np.repeat(np.arange(T, dtype=np.int32)[None], B, 0)
got = []
for a, b in [(0, 10)] + [(t, t + 1) for t in range(10, T)]:
    o = inc.run(None, {"adapter": adapter, **dict(zip(kvn, past)), "past_mask": mask,
                       "tokens": toks[:, a:b], "position_ids": pos[:, a:b]})
    got.append(o[0]); past = o[1:]
    mask = np.concatenate([mask, np.ones((B, b - a), np.float32)], 1)
d_kv = np.abs(np.concatenate(got, 1) - want).max()
print("kv-cache decoding vs the whole decoder: max logit diff %.2e" % d_kv)
assert d_kv < 1e-4, d_kv
