# Shared by cross/build and cross/test (sourced, not executed): the aarch64 toolchain check
# and install, and the cargo environment for aarch64-unknown-linux-gnu.
#
# Nothing here writes a .cargo/config.toml: the linker, C compiler and runner are passed as
# environment variables, so host builds of the workspace are untouched.

LETHE_CROSS_TARGET=aarch64-unknown-linux-gnu
LETHE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Own target folder by default: host builds (target/debug, target/release) keep their cache
# and their build lock; set CARGO_TARGET_DIR to override.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LETHE_ROOT/target/cross}"
# Cross builds are long and share the machine: lower their priority (LETHE_NICE=0 to not).
LETHE_NICE="${LETHE_NICE:-10}"

cross_log() { echo "cross: $*" >&2; }

# Installs the Debian packages named in "$@" that are missing (apt-get, as root or via sudo).
cross_apt_install() {
    local missing=() p
    for p in "$@"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] \
            || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            cross_log "missing Debian packages ${missing[*]} and not root (no sudo): install them"
            return 1
        }
        sudo=(sudo)
    fi
    cross_log "installing ${missing[*]} (apt-get)"
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

# The cross linker + C compiler (ring builds C and assembly) and the Rust target.
cross_ensure_toolchain() {
    command -v aarch64-linux-gnu-gcc >/dev/null && [[ -d /usr/aarch64-linux-gnu/lib ]] \
        || cross_apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
    if ! grep -qx "$LETHE_CROSS_TARGET" <<<"$(rustup target list --installed)"; then
        cross_log "adding Rust target $LETHE_CROSS_TARGET (rustup)"
        rustup target add "$LETHE_CROSS_TARGET" >&2
    fi
}

# qemu-aarch64 (Debian's qemu-user; qemu-user-static's binary is accepted too).
cross_ensure_qemu() {
    if command -v qemu-aarch64 >/dev/null; then
        LETHE_QEMU=qemu-aarch64
    elif command -v qemu-aarch64-static >/dev/null; then
        LETHE_QEMU=qemu-aarch64-static
    else
        cross_apt_install qemu-user
        LETHE_QEMU=qemu-aarch64
    fi
}

# The folder qemu-aarch64 gets as -L: Debian's arm64 cross libraries (loader, glibc,
# libstdc++) plus an aarch64 /proc/cpuinfo.
#
# Why the cpuinfo: qemu-user (7.2, Debian 12) passes /proc/cpuinfo through from the x86
# host. ONNX Runtime's CPU detection (pytorch/cpuinfo) parses it as ARM, finds no ARM
# processor records and dereferences NULL: every ONNX Runtime session segfaults under
# emulation. qemu resolves absolute paths of the emulated program inside the -L folder first
# when they exist there, so proc/cpuinfo in that folder is what ONNX Runtime reads. It
# describes one Cortex-A78AE (Jetson Orin's core: implementer 0x41, part 0xd42) per host CPU
# that /sys/devices/system/cpu/present lists; the instruction-set features ONNX Runtime uses
# come from the auxiliary vector (AT_HWCAP), which qemu sets for the CPU it emulates.
cross_qemu_root() {
    local root="$CARGO_TARGET_DIR/qemu-aarch64-root"
    mkdir -p "$root/proc"
    ln -sfn /usr/aarch64-linux-gnu/lib "$root/lib"
    local n i
    n="$(getconf _NPROCESSORS_CONF)"
    {
        for ((i = 0; i < n; i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 62.50\n' "$i"
            printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
            printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n'
        done
    } >"$root/proc/cpuinfo"
    LETHE_QEMU_ROOT="$root"
}

# Exports the cargo variables for the aarch64 target (and the qemu runner when
# cross_ensure_qemu ran).
cross_env() {
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    if [[ -n "${LETHE_QEMU:-}" ]]; then
        cross_qemu_root
        export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$LETHE_QEMU -L $LETHE_QEMU_ROOT"
    fi
}

# Runs cargo at low priority.
cross_cargo() {
    nice -n "$LETHE_NICE" cargo "$@"
}
