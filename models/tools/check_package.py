"""Check an exported package with ONNX Runtime (Python): dynamic batch of the inference graphs,
and the train-step graph against the JAX fixtures. A packaging-time sanity check; the Rust
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
