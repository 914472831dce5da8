"""The tiny vision-language model in plain JAX (no framework), so that the same functions
train it and are exported to ONNX by jax2onnx.

Layout (shapes fixed by CFG):
  vision encoder (frozen after pretraining; exported as vision.onnx):
    image [B,64,64,3] float 0..255 -> 8x8 patches as ONE MatMul (192 -> DE) -> +pos
    -> ENC_LAYERS pre-LN transformer blocks -> LN -> 2x2 patch merge -> features [B,16,4*DE]
  decoder (exported as decoder.onnx and inside train_step.onnx):
    features -> projector (Linear 4*DE->DD, GELU, Linear DD->DD)   [ADAPTER]
    text tokens -> tied embedding + pos; image tokens first, then text
    DEC_LAYERS causal pre-LN blocks whose q,k,v,o,up,down carry LoRA (rank R) [ADAPTER]
    final LN -> logits over the vocabulary (tied embedding)
  has_image [B] (0/1) hides the image positions from text positions, so one fixed-shape
  graph serves image questions and text-only questions.
The ADAPTER (LoRA A/B of every decoder linear + the projector) is one flat f32 vector: the
only thing unlearning changes. LoRA B starts at zero and stays frozen during pretraining.
"""
import math
import numpy as np
import jax
import jax.numpy as jnp

CFG = dict(img=64, patch=8, de=128, enc_layers=3, enc_mlp=256, heads=4,
           dd=160, dec_layers=3, dec_mlp=640, lora_r=8, lora_scale=2.0, text_len=28)
NPATCH = (CFG["img"] // CFG["patch"]) ** 2          # 64
NIMG = NPATCH // 4                                  # 16 image tokens after 2x2 merge
FEAT = 4 * CFG["de"]                                # 512
LORA_TARGETS = ["q", "k", "v", "o", "up", "down"]


def _dims(name):
    d, m = CFG["dd"], CFG["dec_mlp"]
    return {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d), "up": (d, m), "down": (m, d)}[name]


def adapter_layout():
    """Ordered (name, shape) of the flat adapter vector."""
    out = [("proj1_w", (FEAT, CFG["dd"])), ("proj1_b", (CFG["dd"],)),
           ("proj2_w", (CFG["dd"], CFG["dd"])), ("proj2_b", (CFG["dd"],))]
    for l in range(CFG["dec_layers"]):
        for t in LORA_TARGETS:
            din, dout = _dims(t)
            out.append((f"dec{l}_{t}_lora_a", (din, CFG["lora_r"])))
            out.append((f"dec{l}_{t}_lora_b", (CFG["lora_r"], dout)))
    return out


def flatten(ad):
    return jnp.concatenate([ad[n].reshape(-1) for n, _ in adapter_layout()])


def split_flat(vec):
    """Flat vector -> list of tensors in layout order."""
    sizes = [int(np.prod(s)) for _, s in adapter_layout()]
    parts = jnp.split(vec, np.cumsum(sizes)[:-1].tolist())
    return [p.reshape(s) for p, (_, s) in zip(parts, adapter_layout())]


def unflatten(vec):
    return {n: t for (n, _), t in zip(adapter_layout(), split_flat(vec))}


def init(seed, vocab_size):
    rng = np.random.default_rng(seed)
    nrm = lambda *s, std=0.02: jnp.asarray(rng.normal(0, std, s).astype(np.float32))
    zeros = lambda *s: jnp.zeros(s, jnp.float32)
    ones = lambda *s: jnp.ones(s, jnp.float32)
    lin = lambda a, b: (jnp.asarray((rng.normal(0, 1, (a, b)) / math.sqrt(a)).astype(np.float32)), zeros(b))
    vis, dec, ad = {}, {}, {}
    de, dd = CFG["de"], CFG["dd"]
    vis["patch_w"], vis["patch_b"] = lin(3 * CFG["patch"] ** 2, de)
    vis["pos"] = nrm(NPATCH, de)
    for l in range(CFG["enc_layers"]):
        p = f"enc{l}_"
        vis[p + "ln1_g"], vis[p + "ln1_b"] = ones(de), zeros(de)
        vis[p + "ln2_g"], vis[p + "ln2_b"] = ones(de), zeros(de)
        for t in ["q", "k", "v", "o"]:
            vis[p + t + "_w"], vis[p + t + "_b"] = lin(de, de)
        vis[p + "up_w"], vis[p + "up_b"] = lin(de, CFG["enc_mlp"])
        vis[p + "down_w"], vis[p + "down_b"] = lin(CFG["enc_mlp"], de)
    vis["ln_g"], vis["ln_b"] = ones(de), zeros(de)
    ad["proj1_w"], ad["proj1_b"] = lin(FEAT, dd)
    ad["proj2_w"], ad["proj2_b"] = lin(dd, dd)
    dec["tok"] = nrm(vocab_size, dd)
    dec["pos"] = nrm(NIMG + CFG["text_len"], dd)
    for l in range(CFG["dec_layers"]):
        p = f"dec{l}_"
        dec[p + "ln1_g"], dec[p + "ln1_b"] = ones(dd), zeros(dd)
        dec[p + "ln2_g"], dec[p + "ln2_b"] = ones(dd), zeros(dd)
        for t in LORA_TARGETS:
            din, dout = _dims(t)
            dec[p + t + "_w"], dec[p + t + "_b"] = lin(din, dout)
            ad[p + t + "_lora_a"] = jnp.asarray((rng.normal(0, 1, (din, CFG["lora_r"])) / math.sqrt(din)).astype(np.float32))
            ad[p + t + "_lora_b"] = zeros(CFG["lora_r"], dout)
    dec["lnf_g"], dec["lnf_b"] = ones(dd), zeros(dd)
    return vis, dec, ad


def layer_norm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * g + b


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


def log_softmax(x):
    """Written out: tract's LogSoftmax underflows to -inf far below the max (see the probe)."""
    m = jax.lax.stop_gradient(x.max(-1, keepdims=True))
    z = x - m
    return z - jnp.log(jnp.exp(z).sum(-1, keepdims=True))


def _attend(h, P, prefix, allowed, lora=None):
    B, S, D = h.shape
    H = CFG["heads"]
    hd = D // H

    def proj(t, x):
        y = x @ P[prefix + t + "_w"] + P[prefix + t + "_b"]
        if lora is not None:
            y = y + (x @ lora[prefix + t + "_lora_a"]) @ lora[prefix + t + "_lora_b"] * CFG["lora_scale"]
        return y

    a = layer_norm(h, P[prefix + "ln1_g"], P[prefix + "ln1_b"])
    q, k, v = (proj(t, a).reshape(B, S, H, hd).transpose(0, 2, 1, 3) for t in ("q", "k", "v"))
    s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))
    if allowed is not None:
        s = jnp.where(allowed, s, -1e9)
    w = jax.nn.softmax(s, axis=-1)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(B, S, D)
    h = h + proj("o", o)
    a = layer_norm(h, P[prefix + "ln2_g"], P[prefix + "ln2_b"])
    return h + proj("down", gelu(proj("up", a)))


def encode_tokens(vis, image):
    """image [B,64,64,3] float 0..255 -> encoder tokens [B,64,DE] (before merge)."""
    B = image.shape[0]
    g, p = CFG["img"] // CFG["patch"], CFG["patch"]
    x = image / 127.5 - 1.0
    x = x.reshape(B, g, p, g, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(B, g * g, p * p * 3)
    h = x @ vis["patch_w"] + vis["patch_b"] + vis["pos"]
    for l in range(CFG["enc_layers"]):
        h = _attend(h, vis, f"enc{l}_", None)
    return layer_norm(h, vis["ln_g"], vis["ln_b"])


def merge(h):
    """2x2 patch merge: [B,64,DE] -> [B,16,4*DE]."""
    B = h.shape[0]
    g = CFG["img"] // CFG["patch"]
    return h.reshape(B, g // 2, 2, g // 2, 2, -1).transpose(0, 1, 3, 2, 4, 5).reshape(B, NIMG, FEAT)


def vision(vis, image):
    return merge(encode_tokens(vis, image))


def _sequence(dec, ad, feats, has_image, tokens):
    """The decoder's input (image tokens, then text, with positions) [B,S,D] and the keys each
    position may see [B,1,S,S]."""
    B, T = tokens.shape
    img = gelu(feats @ ad["proj1_w"] + ad["proj1_b"]) @ ad["proj2_w"] + ad["proj2_b"]
    txt = jnp.take(dec["tok"], tokens, axis=0)
    h = jnp.concatenate([img, txt], 1) + dec["pos"][: NIMG + T]
    S = NIMG + T
    causal = jnp.tril(jnp.ones((S, S), dtype=bool))
    key_is_text = (jnp.arange(S) >= NIMG)[None, :]
    visible = key_is_text | (has_image[:, None] > 0.5)          # [B,S]
    return h, causal[None, None] & visible[:, None, None, :]


def decode(dec, ad, feats, has_image, tokens):
    """feats [B,16,FEAT], has_image [B] (0/1 float), tokens [B,T] int -> logits [B,T,V]."""
    h, allowed = _sequence(dec, ad, feats, has_image, tokens)
    for l in range(CFG["dec_layers"]):
        h = _attend(h, dec, f"dec{l}_", allowed, lora=ad)
    h = layer_norm(h[:, NIMG:], dec["lnf_g"], dec["lnf_b"])
    return h @ dec["tok"].T



# ---------------------------------------------------------------- the training formulation
# decode() as train_step.onnx computes it: the same function (logits equal to decode's within
# float rounding; export.py checks it), arranged so that its gradient graph has fewer, larger
# operations. On 2 CPU cores the step is bound by the number of small ops, not by FLOPs:
#  - q, k and v share one frozen [D, 3D] product, and their LoRA A factors one [D, 3R] product
#    (one matmul forward and one for the input gradient instead of three, and no sums);
#  - the LoRA scale is applied to B ([R, out]) rather than to every [B, S, out] output, and the
#    attention scale 1/sqrt(hd) is folded into the frozen q weights and q's LoRA scale;
#  - the mask is an additive bias built once per call, not a Where per layer (masked scores
#    get -1e9 added; their softmax weight is exactly 0 either way; rows with nothing visible,
#    the image rows of a text-only question, reach no loss term);
#  - layer norm multiplies by rsqrt(var + eps) and squares by a product: no Pow or Div over
#    [B, S, D] in the gradient.
def train_weights(dec):
    """Frozen decoder weights rearranged for decode_train (computed once, in numpy)."""
    out = {k: np.asarray(v) for k, v in dec.items()}
    c = 1.0 / math.sqrt(CFG["dd"] // CFG["heads"])
    for l in range(CFG["dec_layers"]):
        p = f"dec{l}_"
        out[p + "qkv_w"] = np.concatenate([out[p + "q_w"] * c, out[p + "k_w"], out[p + "v_w"]], 1)
        out[p + "qkv_b"] = np.concatenate([out[p + "q_b"] * c, out[p + "k_b"], out[p + "v_b"]], 0)
    out["tok_t"] = np.ascontiguousarray(out["tok"].T)
    return out


def _layer_norm_train(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    return xc * jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps) * g + b


def _attend_train(h, P, prefix, bias, lora):
    B, S, D = h.shape
    H, s = CFG["heads"], CFG["lora_scale"]
    hd = D // H

    def proj(t, x):
        y = x @ P[prefix + t + "_w"] + P[prefix + t + "_b"]
        return y + (x @ lora[prefix + t + "_lora_a"]) @ (lora[prefix + t + "_lora_b"] * s)

    a = _layer_norm_train(h, P[prefix + "ln1_g"], P[prefix + "ln1_b"])
    base = jnp.split(a @ P[prefix + "qkv_w"] + P[prefix + "qkv_b"], 3, axis=-1)
    low = jnp.split(a @ jnp.concatenate([lora[prefix + t + "_lora_a"] for t in "qkv"], 1), 3, axis=-1)
    scale = {"q": s / math.sqrt(hd), "k": s, "v": s}
    q, k, v = ((y + u @ (lora[prefix + t + "_lora_b"] * scale[t])).reshape(B, S, H, hd).transpose(0, 2, 1, 3)
               for t, y, u in zip("qkv", base, low))
    w = jax.nn.softmax(q @ k.transpose(0, 1, 3, 2) + bias, axis=-1)
    o = (w @ v).transpose(0, 2, 1, 3).reshape(B, S, D)
    h = h + proj("o", o)
    a = _layer_norm_train(h, P[prefix + "ln2_g"], P[prefix + "ln2_b"])
    return h + proj("down", gelu(proj("up", a)))


def decode_train(tw, ad, feats, has_image, tokens):
    """decode() with train_weights(dec) as tw: the formulation train_step.onnx is exported from."""
    h, allowed = _sequence(tw, ad, feats, has_image, tokens)
    bias = jnp.where(allowed, 0.0, -1e9).astype(h.dtype)
    for l in range(CFG["dec_layers"]):
        h = _attend_train(h, tw, f"dec{l}_", bias, ad)
    h = _layer_norm_train(h[:, NIMG:], tw["lnf_g"], tw["lnf_b"])
    return h @ tw["tok_t"]

# ---------------------------------------------------------------- incremental decoding
# The same decoder split in two, for generation with a key/value cache (the layout ONNX Runtime
# GenAI and Optimum use: past_key_values.N.key/value in, present.N.key/value out, [B,H,K,hd]):
#   decode_prefix: the image positions once per image -> their keys/values per layer;
#   decode_step:   S new text tokens at text positions `position_ids`, attending to K cached
#                  positions (where `past_mask` is 1) and causally to each other -> logits of
#                  the new tokens and the cache grown by S.
# decode(feats, has_image, tokens) == decode_step(decode_prefix(feats), mask, tokens, 0..T-1).


def _attend_kv(h, P, prefix, lora, past_k, past_v, allowed):
    """One decoder block over new positions h [B,S,D] with cached keys/values [B,H,K,hd]."""
    B, S, D = h.shape
    H = CFG["heads"]
    hd = D // H

    def proj(t, x):
        y = x @ P[prefix + t + "_w"] + P[prefix + t + "_b"]
        return y + (x @ lora[prefix + t + "_lora_a"]) @ lora[prefix + t + "_lora_b"] * CFG["lora_scale"]

    a = layer_norm(h, P[prefix + "ln1_g"], P[prefix + "ln1_b"])
    q, k, v = (proj(t, a).reshape(B, S, H, hd).transpose(0, 2, 1, 3) for t in ("q", "k", "v"))
    k_all = jnp.concatenate([past_k, k], 2)
    v_all = jnp.concatenate([past_v, v], 2)
    s = (q @ k_all.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))
    s = jnp.where(allowed, s, -1e9)
    w = jax.nn.softmax(s, axis=-1)
    o = (w @ v_all).transpose(0, 2, 1, 3).reshape(B, S, D)
    h = h + proj("o", o)
    a = layer_norm(h, P[prefix + "ln2_g"], P[prefix + "ln2_b"])
    return h + proj("down", gelu(proj("up", a))), k_all, v_all


def decode_prefix(dec, ad, feats):
    """feats [B,16,FEAT] -> [(key, value)] per layer, each [B,H,16,hd]: the image positions.
    (Whether text may see them is the step's past_mask: 0 hides them, as has_image = 0 does.)"""
    B = feats.shape[0]
    H, D = CFG["heads"], CFG["dd"]
    img = gelu(feats @ ad["proj1_w"] + ad["proj1_b"]) @ ad["proj2_w"] + ad["proj2_b"]
    h = img + dec["pos"][:NIMG]
    causal = jnp.tril(jnp.ones((NIMG, NIMG), dtype=bool))[None, None]
    empty = jnp.zeros((B, H, 0, D // H), h.dtype)
    out = []
    for l in range(CFG["dec_layers"]):
        h, k, v = _attend_kv(h, dec, f"dec{l}_", ad, empty, empty, causal)
        out.append((k, v))
    return out


def decode_step(dec, ad, past, past_mask, tokens, position_ids):
    """past: [(key, value)] per layer [B,H,K,hd]; past_mask [B,K] (1 = visible); tokens,
    position_ids [B,S] (text positions, 0-based) -> logits [B,S,V], present (K+S long)."""
    S = tokens.shape[1]
    h = jnp.take(dec["tok"], tokens, axis=0) + jnp.take(dec["pos"], position_ids + NIMG, axis=0)
    causal = jnp.tril(jnp.ones((S, S), dtype=bool))
    B = tokens.shape[0]
    allowed = jnp.concatenate(
        [jnp.broadcast_to((past_mask > 0.5)[:, None, None, :], (B, 1, S, past_mask.shape[1])),
         jnp.broadcast_to(causal[None, None], (B, 1, S, S))], -1)
    present = []
    for l in range(CFG["dec_layers"]):
        h, k, v = _attend_kv(h, dec, f"dec{l}_", ad, past[l][0], past[l][1], allowed)
        present.append((k, v))
    h = layer_norm(h, dec["lnf_g"], dec["lnf_b"])
    return h @ dec["tok"].T, present
