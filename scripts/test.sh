#!/usr/bin/env bash
# Runs Hazel's whole test suite on a fresh machine: installs the system
# packages the build and the protocol-peer tests need (OpenSSH sshd, libssl),
# then runs every test of the workspace. CI calls this through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

cargo test --workspace --no-fail-fast "$@"
