#!/usr/bin/env bash
# Installs the system packages Hazel's build and tests need when they are
# missing: OpenSSH (the real sshd the SSH driver tests talk to), NUT (the real
# upsd and dummy-ups driver the NUT tests talk to), libssl and
# pkg-config (libssh2), a C compiler, Chromium and its WebDriver (the
# console's browser tests). Idempotent; does nothing when all are there.
set -euo pipefail

need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
[ -x /lib/nut/upsd ] && [ -x /lib/nut/dummy-ups ] || need+=(nut-server)
command -v upsc >/dev/null 2>&1 || need+=(nut-client)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
# The web console's browser tests drive a real headless Chromium over
# WebDriver (tests/tests/console.rs).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)

if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
  else
    echo "test.sh: missing ${need[*]} and not root: install them with apt-get install -y ${need[*]}" >&2
    exit 1
  fi
fi

