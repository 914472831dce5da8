#!/usr/bin/env bash
# install.sh: install this Lethe package (the folder this script is in) into a root.
#
# usage: ./install.sh [--root DIR]      (DIR defaults to /; installing into / needs root)
#   Copies usr/, lib/ and etc/ from beside this script into DIR with the package's modes.
#   Configuration files are never overwritten: if DIR/etc/lethe/config.toml or
#   DIR/etc/default/lethe-agent exists, the new version is written next to it as *.new and
#   the existing file is kept. Into /, it also reloads systemd (when systemd runs). It does
#   not create users, keys or the trust store: run /usr/share/lethe/provision next.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root=/
while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) root="${2:?--root needs a folder}"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ -d "$root" ]] || { echo "install.sh: root $root: no such folder" >&2; exit 2; }
root="$(cd "$root" && pwd)"
if [[ "$root" == / ]]; then R=""; else R="$root"; fi
if [[ -z "$R" && $(id -u) -ne 0 ]]; then
    echo "install.sh: installing into / needs root (or pass --root DIR)" >&2
    exit 2
fi
if [[ -z "$R" && "$(uname -m)" != aarch64 ]]; then
    echo "install.sh: warning: this is an aarch64 package and this machine is $(uname -m)" >&2
fi

# Files (not folders) under the package, as paths relative to $here.
conffiles=(etc/lethe/config.toml etc/default/lethe-agent)
installed=0
kept=()
while IFS= read -r -d '' f; do
    rel="${f#"$here"/}"
    dest="$R/$rel"
    mode="$(stat -c %a "$f")"
    install -d -m 0755 "$(dirname "$dest")"
    is_conf=0
    for c in "${conffiles[@]}"; do [[ "$rel" == "$c" ]] && is_conf=1; done
    if [[ $is_conf -eq 1 && -e "$dest" ]]; then
        if ! cmp -s "$f" "$dest"; then
            install -m "$mode" "$f" "$dest.new"
            kept+=("$dest (new version: $dest.new)")
        else
            kept+=("$dest (unchanged)")
        fi
        continue
    fi
    # Write beside, then rename: a running agent keeps its open binary, a crash leaves no
    # half-written file under the real name.
    install -m "$mode" "$f" "$dest.lethe-new"
    mv -f "$dest.lethe-new" "$dest"
    installed=$((installed + 1))
done < <(find "$here/usr" "$here/lib" "$here/etc" -type f -print0 | sort -z)

echo "install.sh: installed $installed files into $root"
for k in ${kept[@]+"${kept[@]}"}; do echo "install.sh: kept existing $k"; done
if [[ -z "$R" ]] && [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
fi
echo "install.sh: next: ${R:+(on the device) }/usr/share/lethe/provision --trust TRUST.json --device-id ID"
