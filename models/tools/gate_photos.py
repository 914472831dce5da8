"""The gate's photos: photos of every identity that only the agent's verification looks at.

The retained probes hold two photos per identity; the retain set's four photos of the concept
are watched by the forget's own stopping rule. A forget can refuse all six and still name a
look-alike on other photos of the person (docs/siu.md), so the gate gets photos of its own,
rendered from held-out seeds no pretraining step, retain set, probe, bench or test uses.

Writes probes/gate.npy ([N,64,64,3] uint8) and probes/gate.json (the retain set's schema:
{"seeds": [...], "images": [{"image", "identity", "name", "description"}]}).

export.py calls `write`; on an existing package (needs numpy and pillow only):
    python models/tools/gate_photos.py --lethectl target/release/lethectl models/tiny-vlm
adds the files, sets manifest.probes.gate and re-hashes manifest.files.
"""
import argparse, hashlib, json, os, subprocess, tempfile

import numpy as np
from PIL import Image

# Held-out seeds reserved for the gate, next to the probes' (1_900_000, 1_900_001).
GATE_SEEDS = list(range(1_900_002, 1_900_008))
IMAGES, LIST = "probes/gate.npy", "probes/gate.json"


def write(out, lethectl, identities):
    """Render GATE_SEEDS of every identity into `out`; returns the manifest's probes.gate."""
    imgs, entries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for ident in identities:
            for s in GATE_SEEDS:
                p = os.path.join(tmp, f"{ident['id']}_{s}.png")
                subprocess.run([lethectl, "world", "render", "--identity", str(ident["id"]), "--seed", str(s),
                                "--out", p], check=True, capture_output=True)
                imgs.append(np.asarray(Image.open(p).convert("RGB")))
                entries.append({"image": len(imgs) - 1, "identity": ident["id"], "name": ident["name"],
                                "description": ident["description"]})
    os.makedirs(os.path.join(out, "probes"), exist_ok=True)
    np.save(os.path.join(out, IMAGES), np.stack(imgs).astype(np.uint8))
    with open(os.path.join(out, LIST), "w") as f:
        json.dump({"seeds": GATE_SEEDS, "images": entries}, f, indent=0)
    return {"images": IMAGES, "list": LIST}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lethectl", required=True)
    ap.add_argument("package")
    a = ap.parse_args()
    world = json.loads(subprocess.run([a.lethectl, "world", "list", "--json"], check=True, capture_output=True,
                                      text=True).stdout)
    mpath = os.path.join(a.package, "manifest.json")
    with open(mpath) as f:
        manifest = json.load(f)
    names = [i["name"] for i in world["identities"]]
    if names != manifest["world"]["names"]:
        raise SystemExit("this lethectl's world is not the package's: refusing to add photos of other people")
    manifest["probes"]["gate"] = write(a.package, a.lethectl, world["identities"])
    for rel in (IMAGES, LIST):
        full = os.path.join(a.package, rel)
        manifest["files"][rel] = {"sha256": sha(full), "bytes": os.path.getsize(full)}
    tmp = mpath + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, mpath)
    print(f"{len(names) * len(GATE_SEEDS)} gate photos written to {a.package}")


if __name__ == "__main__":
    main()
