#!/bin/sh
# Provisioning of a Debian 12 (bookworm) machine for xlb, shared by the Vagrant box
# (vagrant/Vagrantfile) and the VM image of `cargo xtask vm` (xtask/src/vm.rs), so this script is
# exercised every time that image is built.
#
#   provision.sh runtime [PKG...]   what xlb, the lab and the end-to-end tests need at run time,
#                                   and the Debian packages PKG (the `cargo xtask vm` image, which
#                                   runs binaries built on the host, passes the packages
#                                   `cargo xtask setup` installs: xtask/src/toolchain.rs)
#   provision.sh dev                runtime + the build toolchain (C toolchain, rustup stable in
#                                   /opt/rust for every user, a `cargo` that runs itself as root) for
#                                   a machine that builds and tests xlb itself (the Vagrant box)
#
# Runs as root, is idempotent, and installs Debian packages with --no-install-recommends. The kernel
# is not installed here: the Vagrant box has one, and `cargo xtask vm` installs linux-image-amd64 when
# it bootstraps the root filesystem.
set -eu

# Run time: `ip` (netns, veth, bridge), `ethtool` (offloads, XDP counters), `nsenter` (util-linux),
# `pkill`/`sysctl` (procps), `curl` (demo), `modprobe` (kmod: pktgen), ca-certificates (curl).
RUNTIME_PACKAGES="iproute2 ethtool procps curl util-linux kmod ca-certificates"
# Build: rustc links host binaries with cc; bpf-linker (built by `cargo xtask setup`) needs a C++
# toolchain and git is handy in a checkout.
DEV_PACKAGES="build-essential pkg-config git"

mode=${1:-}
case "$mode" in
runtime | dev) ;;
*)
    echo "usage: $0 runtime [PKG...] | dev" >&2
    exit 2
    ;;
esac

say() { echo "provision: $*"; }

missing=""
shift
want="$RUNTIME_PACKAGES $*"
[ "$mode" = dev ] && want="$want $DEV_PACKAGES"
for p in $want; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
    apt-get clean
fi

# bpffs: the agent pins links under /sys/fs/bpf (systemd mounts it at boot; a bare init does not).
if [ -d /sys/fs/bpf ] && ! grep -q " /sys/fs/bpf bpf " /proc/mounts 2>/dev/null; then
    mount -t bpf bpf /sys/fs/bpf 2>/dev/null || say "could not mount bpffs (not booted yet?)"
fi

[ "$mode" = runtime ] && exit 0

# dev: rustup's stable toolchain, shared by every user, in /opt/rust.
export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
if [ ! -x "$CARGO_HOME/bin/rustup" ]; then
    say "installing rustup (stable) in /opt/rust"
    mkdir -p /opt/rust
    curl --proto '=https' --tlsv1.2 -sSf --retry 3 --max-time 300 https://sh.rustup.rs \
        | sh -s -- -y --no-modify-path --profile minimal --default-toolchain stable \
            --component rust-src,rustfmt,clippy
fi
cat >/etc/profile.d/xlb-rust.sh <<'EOF'
export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
case ":$PATH:" in *:/opt/rust/cargo/bin:*) ;; *) PATH=/usr/local/bin:$PATH:/opt/rust/cargo/bin ;; esac
export PATH
EOF
# xlb's tasks need root (apt-get, bpffs, network namespaces, XDP): in this throwaway machine
# `cargo` runs itself under sudo, with the shared toolchain, so `cargo xtask test` just works.
cat >/usr/local/bin/cargo <<'EOF'
#!/bin/sh
export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
export PATH=/opt/rust/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
[ "$(id -u)" = 0 ] || exec sudo --preserve-env=RUSTUP_HOME,CARGO_HOME,PATH,CARGO_TARGET_DIR "$0" "$@"
exec /opt/rust/cargo/bin/cargo "$@"
EOF
chmod 755 /usr/local/bin/cargo
say "done: $(/opt/rust/cargo/bin/rustc --version)"
