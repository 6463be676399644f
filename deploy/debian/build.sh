#!/usr/bin/env bash
# Builds the Debian package with cargo-deb (metadata: [package.metadata.deb] in Cargo.toml):
#
#   bash deploy/debian/build.sh        # → target/debian/envelope-proxy_<version>_amd64.deb
#
# The last line printed is the path of the .deb. The release binary is reused when it is up to
# date (CI builds it before this runs), so the package holds exactly the binary that was tested.
# Installs cargo-deb (pinned, ~3-5 min of compiling) when `cargo deb` is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

CARGO_DEB_VERSION=3.8.0

if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)" >&2
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION" >&2
fi

# The same command as tests/clients/run.sh: CI's build is reused as is (building the binary alone
# would resolve other features, so rebuild it), and deploy/systemd/integration.sh needs the mock.
echo "== cargo build --release --bin envelope-proxy --example mock-upstream" >&2
cargo build --locked --release --bin envelope-proxy --example mock-upstream >&2

echo "== cargo deb" >&2
# --no-build: package the binary just built. cargo deb prints the .deb's path last.
deb="$(cargo deb --locked --no-build | tail -n 1)"
[ -f "$deb" ] || { echo "build.sh: cargo deb did not produce a .deb ($deb)" >&2; exit 1; }
echo "$deb"
