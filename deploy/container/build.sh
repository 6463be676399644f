#!/usr/bin/env bash
# Builds the OCI image localhost/envelope-proxy:<version> from deploy/container/Containerfile
# with podman (Debian: apt-get install -y podman), or buildah when podman is missing.
#
#   bash deploy/container/build.sh
#
# The last line printed is the image name. The binary is a static release build
# (-C target-feature=+crt-static, x86_64-unknown-linux-gnu, its own target directory so the
# dynamic build the Debian package uses stays as it is); the image needs no base image, so it
# builds without reaching any registry.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

target=x86_64-unknown-linux-gnu
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
image="localhost/envelope-proxy:$version"
roots="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$roots" ] || { echo "build.sh: no CA bundle at $roots (apt-get install -y ca-certificates)" >&2; exit 1; }
if command -v podman >/dev/null 2>&1; then tool=podman; elif command -v buildah >/dev/null 2>&1; then tool=buildah; else
    echo "build.sh: needs podman or buildah (apt-get install -y podman)" >&2
    exit 1
fi

echo "== static release build ($target, +crt-static)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --release --bin envelope-proxy --target "$target" >&2

context="$(mktemp -d "${TMPDIR:-/tmp}/envelope-proxy-image.XXXXXX")"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/usr/bin" "$rootfs/etc/ssl/certs"
install -m 0755 "target/$target/release/envelope-proxy" "$rootfs/usr/bin/envelope-proxy"
# Symbols are half the file; the image needs none (the build keeps its copy for debugging).
if command -v strip >/dev/null 2>&1; then strip "$rootfs/usr/bin/envelope-proxy"; fi
# Read whole before grep: under pipefail, `grep -q` leaving at its first match can kill ldd with
# SIGPIPE, and the failed pipeline would then pass a dynamic binary.
linked="$(ldd "$rootfs/usr/bin/envelope-proxy" 2>&1 || true)"
if grep -q '=>' <<<"$linked"; then
    echo "build.sh: the binary is dynamically linked; a FROM scratch image needs a static one" >&2
    exit 1
fi
install -m 0644 "$roots" "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:envelope-proxy:/nonexistent:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group"

echo "== $tool build -t $image" >&2
if [ "$tool" = podman ]; then
    podman build --quiet -f deploy/container/Containerfile -t "$image" "$context" >&2
else
    buildah build --quiet -f deploy/container/Containerfile -t "$image" "$context" >&2
fi
echo "$image"
