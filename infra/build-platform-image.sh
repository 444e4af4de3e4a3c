#!/usr/bin/env bash
# Builds berth/platform:latest: the `berth` and `berth-node` binaries with the shared
# libraries they load, on top of berth/busybox:latest (for a shell), with no registry.
# infra/compose/pool.yaml runs a whole pool from it on one Docker host.
#
#   infra/build-platform-image.sh            builds the release binaries first
#   BERTH_BIN_DIR=target/debug infra/build-platform-image.sh
#                                            packs binaries built already
set -euo pipefail
cd "$(dirname "$0")/.."

infra/build-images.sh >/dev/null
bin_dir=${BERTH_BIN_DIR:-}
if [ -z "$bin_dir" ]; then
  cargo build --release -p berth-cli -p berth-node-runtime
  bin_dir=target/release
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/usr/local/bin"
for binary in berth berth-node; do
  cp "$bin_dir/$binary" "$root/usr/local/bin/$binary"
  # Every shared library the binary loads, at the path it is loaded from, and the
  # dynamic loader itself.
  for lib in $(ldd "$bin_dir/$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
cat > "$work/Dockerfile" <<'DOCKERFILE'
FROM berth/busybox:latest
COPY rootfs/ /
ENV PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENTRYPOINT ["berth"]
DOCKERFILE
docker build -q -t berth/platform:latest "$work" >/dev/null
echo "berth/platform:latest: built from $bin_dir"
