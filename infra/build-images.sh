#!/usr/bin/env bash
# Builds the images Berth's examples, tests and benchmarks run, on a machine whose
# Docker engine cannot pull: everything comes from Debian's packages.
#
#   berth/busybox:latest   a root file system holding Debian's statically linked
#                          busybox (sh, httpd, wget, nc, ...), made with `docker import`.
#
# Idempotent: an image that exists is left alone (pass --force to rebuild), so a second
# run takes well under a second.
set -euo pipefail

force=0
[ "${1:-}" = "--force" ] && force=1

image=berth/busybox:latest
if [ "$force" = 0 ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image: present"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The busybox-static package, downloaded without installing it on this machine.
cache=${BERTH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/berth}
mkdir -p "$cache"
deb=$(ls "$cache"/busybox-static_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  (cd "$cache" && { apt-get download busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get download busybox-static; }; })
  deb=$(ls "$cache"/busybox-static_*.deb | head -n 1)
fi
dpkg-deb -x "$deb" "$work/pkg"

root=$work/rootfs
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,www,var/www,proc,sys,dev}
chmod 1777 "$root/tmp"
cp "$work/pkg/bin/busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list-full); do
  [ "$applet" = "bin/busybox" ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
# Name resolution through files then DNS (Docker's embedded resolver for service names).
echo "hosts: files dns" > "$root/etc/nsswitch.conf"

tar -C "$root" -c . | docker import \
  --change 'CMD ["sh"]' \
  --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$image" >/dev/null
echo "$image: built from $(basename "$deb")"
