#!/usr/bin/env bash
# Runs every test on a fresh Debian machine with Docker running: installs what the tests
# need (once), builds the images they run, then `cargo test --workspace`. Extra
# arguments go to cargo test (`infra/test.sh -p berth-protocol`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "Docker is not running: the end-to-end tests need it (start it, for example \`systemctl start docker\`)" >&2
  exit 1
fi
for tool in dpkg-deb apt-get; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (Debian's package tools build the images)" >&2; exit 1; }
done

updated=false
install() {
  if [ "$updated" = false ]; then
    apt-get update -qq
    updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL: the database tests run on it as well as on SQLite. The test harness starts
# a throwaway server from these binaries (and stops it when the tests end).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || install postgresql
# docker-compose: the benchmark's peer, the reference of the Compose differential test,
# and the runner of the demo pool in infra/compose.
command -v docker-compose >/dev/null || install docker-compose
# A real registry (the CNCF distribution registry) and htpasswd for its logins: the
# image tests run one on a test host.
command -v docker-registry >/dev/null || install docker-registry
command -v htpasswd >/dev/null || install apache2-utils
# Chromium and its WebDriver: the UI tests drive a real headless browser.
command -v chromedriver >/dev/null || install chromium chromium-driver
# biscuit-cli: the reference biscuit tooling, with which a test inspects and attenuates
# the platform's tokens (the version built on biscuit-auth 6, as Berth is).
command -v biscuit >/dev/null || cargo install --locked biscuit-cli --version 0.6.0
# schemathesis: generates requests from the API's OpenAPI document against a real
# server and checks every answer against it (tests/tests/contract.rs). Pinned, from PyPI.
SCHEMATHESIS=4.32.5
if ! st --version 2>/dev/null | grep -q "$SCHEMATHESIS"; then
  command -v pip3 >/dev/null || install python3-pip
  pip3 install -q "schemathesis==$SCHEMATHESIS" 2>/dev/null \
    || pip3 install -q --break-system-packages "schemathesis==$SCHEMATHESIS"
fi

# The test hosts (infra/hosts.sh): network namespaces, each with its own engine and
# node, whose firewall is nftables; PostgreSQL runs on one of them in some tests.
command -v nft >/dev/null || install nftables
command -v ip >/dev/null && command -v ss >/dev/null || install iproute2
command -v nsenter >/dev/null && command -v runuser >/dev/null || install util-linux
command -v iptables >/dev/null || install iptables
command -v python3 >/dev/null || install python3
# A test run killed half-way leaves its hosts behind; the next one removes them. The
# tests run no node with a firewall in this machine's own namespace, so a table there
# is one an agent killed by an earlier run left.
bash infra/hosts.sh sweep
nft delete table inet berth_node 2>/dev/null || true

# Images the examples and tests run (no registry is reachable here): idempotent and fast when present.
bash infra/build-images.sh

cargo test --workspace "$@"
