#!/usr/bin/env bash
# Rebuild the bundled model package from scratch (packaging time only; needs Python 3.11 and
# ~1 GB of PyPI packages; about 35 minutes on 2 CPU cores, measured 2026-12-08):
#   models/tools/build.sh [OUT_DIR]   (default models/tiny-vlm)
# Extra train.py options (an experiment's, e.g. "--id_margin 0.25 --hard_negatives 0.5") go in
# LETHE_TRAIN_ARGS; the checkpoint then goes to models/work/<OUT_DIR's name>.npz.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/models/tiny-vlm}"
work="$root/models/work"
venv="$root/models/.venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/requirements.txt"
cargo build --release -q -p lethectl --manifest-path "$root/Cargo.toml"
lethectl="$root/target/release/lethectl"
mkdir -p "$work"
ckpt="$work/$(basename "$out").npz"
# shellcheck disable=SC2086  # LETHE_TRAIN_ARGS is a list of options
"$venv/bin/python" "$here/train.py" --lethectl "$lethectl" --data "$work/data" --out "$ckpt" \
  --per_id 2500 --test_per_id 50 --steps1 2000 --steps2 2500 ${LETHE_TRAIN_ARGS:-}
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
"$venv/bin/python" "$here/export.py" --ckpt "$ckpt" --lethectl "$lethectl" --out "$out.tmp"
"$venv/bin/python" "$here/check_package.py" "$out.tmp"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "package written to $out"
