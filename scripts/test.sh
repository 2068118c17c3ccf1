#!/usr/bin/env bash
# Runs Hazel's whole test suite on a fresh machine: installs the system
# packages the build and the protocol-peer tests need (OpenSSH sshd, libssl),
# and cargo-deb (the Debian package test, tests/tests/deb_package.rs, builds
# the .deb), then runs every test of the workspace. CI calls this through
# .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

# Pinned: the package test packs a debug binary, which later cargo-deb
# releases may refuse. Installing it compiles for about a minute of CPU,
# once per machine (it stays in ~/.cargo/bin).
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
  echo "test.sh: installing cargo-deb $CARGO_DEB_VERSION"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked
fi

cargo test --workspace --no-fail-fast "$@"
