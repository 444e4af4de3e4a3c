#!/usr/bin/env bash
# Test hosts on one machine: each a network namespace with its own address on a bridge
# and its own Docker engine (data root, exec root, socket, bridge subnet), so a pool can
# be tried, and tested, with every node on a host of its own.
#
#   infra/hosts.sh up COUNT         makes a set of COUNT hosts; prints its name, then one
#                                   line per host: NAME ADDRESS DOCKER_HOST
#   infra/hosts.sh down SET         removes the set: containers, engines, namespaces,
#                                   the bridge and every file
#   infra/hosts.sh exec HOST CMD..  runs CMD on HOST (in its network namespace, with
#                                   DOCKER_HOST set to its engine)
#   infra/hosts.sh cut HOST         takes HOST's link down (its engine and containers
#                                   keep running); `infra/hosts.sh mend HOST` brings it
#                                   back
#   infra/hosts.sh restart-engine HOST
#                                   stops HOST's engine (its containers stop with it)
#                                   and starts it again
#   infra/hosts.sh images SET IMG.. copies images from this machine's engine to each
#                                   host's engine
#   infra/hosts.sh sweep            removes every set whose maker has exited
#
# A set `bhK` has the bridge bhK at 10.77.K.1/24 in this machine's namespace (where a
# control plane may listen) and hosts bhK-1, bhK-2, ... at 10.77.K.11, .12, ...; host I's
# engine puts its default bridge at 10.200.I.1/24. The maker's process id is kept with
# the set (BERTH_HOSTS_OWNER, or the caller of `up`), so `sweep` (run by every `up`)
# removes what a killed test left. Engines are started with `nsenter --net=`, since
# `ip netns exec` remounts /sys and dockerd then finds no devices cgroup.
set -euo pipefail

runs=/run/berth-hosts
mkdir -p "$runs"

die() { echo "hosts.sh: $*" >&2; exit 1; }

storage_driver() {
  docker info --format '{{.Driver}}' 2>/dev/null || echo overlay2
}

host_dir() { echo "$runs/${1%-*}/${1##*-}"; }

stop_engine() {
  local dir=$1
  [ -f "$dir/docker.pid" ] || return 0
  local pid
  pid=$(cat "$dir/docker.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # Containers first, so the engine stops quickly and unmounts their layers.
    DOCKER_HOST="unix://$dir/docker.sock" timeout 30 docker ps -aq 2>/dev/null \
      | xargs -r env DOCKER_HOST="unix://$dir/docker.sock" timeout 60 docker rm -f >/dev/null 2>&1 || true
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  # Whatever the engine left: its containerd and shims, and mounts under its roots.
  pkill -9 -f -- "$dir/" 2>/dev/null || true
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done || true
}

# Starts HOST's engine in its namespace (in the background).
start_engine() {
  local ns=$1 host i=${1##*-}
  host=$(host_dir "$ns")
  nsenter --net="/var/run/netns/$ns" dockerd \
    --config-file "$host/daemon.json" \
    --data-root "$host/data" --exec-root "$host/exec" \
    --pidfile "$host/docker.pid" -H "unix://$host/docker.sock" \
    --bip "10.200.$i.1/24" >>"$host/dockerd.log" 2>&1 &
}

# Waits up to 30 s for HOST's engine to answer.
wait_engine() {
  local host
  host=$(host_dir "$1")
  for _ in $(seq 1 300); do
    DOCKER_HOST="unix://$host/docker.sock" docker version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  tail -20 "$host/dockerd.log" >&2
  die "the engine of $1 never answered"
}

# Stops HOST's engine as a host's shutdown would (its containers stop with it), then
# starts it again and waits for it.
restart_engine() {
  local host pid
  host=$(host_dir "$1")
  pid=$(cat "$host/docker.pid")
  kill "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "the engine of $1 did not stop"
  start_engine "$1"
  wait_engine "$1"
}

down() {
  local set=$1 dir=$runs/$1
  [[ "$set" =~ ^bh[0-9]+$ ]] || die "no such set: $set"
  for host in "$dir"/*/; do
    [ -d "$host" ] || continue
    stop_engine "${host%/}"
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$set-[0-9]+$" || true); do
    # Whatever else still runs in the namespace (node agents, say).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
  for link in $(ip -o link show 2>/dev/null | grep -oE " $set-h[0-9]+@" | tr -d ' @' | sort -u); do
    ip link del "$link" 2>/dev/null || true
  done
  while iptables -D FORWARD -i "$set" -o "$set" -j ACCEPT 2>/dev/null; do :; done
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done || true
  rm -rf "$dir" 2>/dev/null || rm -rf "$dir" || true
  # The bridge is the claim on the set's number: released last, so that an `up`
  # running meanwhile cannot take the number and have its directory removed here.
  ip link del "$set" 2>/dev/null || true
}

# Sets are swept and claimed one process at a time, so that a set being made (its
# bridge claimed, its owner not yet written) is never taken for an abandoned one.
lock() {
  exec 9>"$runs/.lock"
  flock 9
}

sweep() {
  for dir in "$runs"/bh*; do
    [ -d "$dir" ] || continue
    local owner
    owner=$(cat "$dir/owner" 2>/dev/null || echo 0)
    if [ "$owner" = 0 ] || ! kill -0 "$owner" 2>/dev/null; then
      down "$(basename "$dir")"
    fi
  done
}

up() {
  local count=$1 owner=${BERTH_HOSTS_OWNER:-$PPID}
  [[ "$count" =~ ^[0-9]+$ ]] && [ "$count" -ge 1 ] && [ "$count" -le 50 ] \
    || die "COUNT must be 1 to 50, not $count"
  lock
  sweep
  # Claim a set: making its bridge is what takes the number.
  local k set=""
  for k in $(seq 1 250); do
    if ip link add "bh$k" type bridge 2>/dev/null; then set=bh$k; break; fi
  done
  [ -n "$set" ] || die "no free set (bh1 to bh250 all exist)"
  local dir=$runs/$set
  mkdir -p "$dir"
  echo "$owner" > "$dir/owner"
  flock -u 9
  trap 'down "$set"' ERR
  ip addr add "10.77.$k.1/24" dev "$set"
  ip link set "$set" up
  # Frames between hosts cross this machine's bridge, and with br_netfilter they meet
  # its FORWARD chain, whose policy the machine's own engine sets to drop.
  iptables -I FORWARD 1 -i "$set" -o "$set" -j ACCEPT
  local driver
  driver=$(storage_driver)
  echo "$set"
  local i
  for i in $(seq 1 "$count"); do
    local ns=$set-$i host=$dir/$i address=10.77.$k.$((10 + i))
    mkdir -p "$host"
    ip netns add "$ns"
    ip link add "$set-h$i" type veth peer name eth0 netns "$ns"
    ip link set "$set-h$i" master "$set" up
    ip -n "$ns" addr add "$address/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "10.77.$k.1"
    cat > "$host/daemon.json" <<JSON
{"storage-driver": "$driver", "mtu": 1400, "log-driver": "json-file",
 "default-address-pools": [{"base": "10.$((200 + i)).0.0/16", "size": 24}],
 "insecure-registries": ["10.77.0.0/16"]}
JSON
    start_engine "$ns"
    echo "$ns $address unix://$host/docker.sock" >> "$dir/hosts"
  done
  for i in $(seq 1 "$count"); do
    wait_engine "$set-$i"
  done
  trap - ERR
  cat "$dir/hosts"
}

host_env() {
  local host=$1 dir
  [[ "$host" =~ ^bh[0-9]+-[0-9]+$ ]] || die "no such host: $host"
  dir=$(host_dir "$host")
  [ -d "$dir" ] || die "no such host: $host"
  echo "unix://$dir/docker.sock"
}

case "${1:-}" in
  up) [ $# -eq 2 ] || die "usage: up COUNT"; up "$2" ;;
  down) [ $# -eq 2 ] || die "usage: down SET"; down "$2" ;;
  sweep) lock; sweep ;;
  exec)
    [ $# -ge 3 ] || die "usage: exec HOST CMD..."
    docker_host=$(host_env "$2")
    ns=$2; shift 2
    DOCKER_HOST=$docker_host exec nsenter --net="/var/run/netns/$ns" "$@" ;;
  restart-engine)
    [ $# -eq 2 ] || die "usage: restart-engine HOST"; host_env "$2" >/dev/null
    restart_engine "$2" ;;
  cut)
    [ $# -eq 2 ] || die "usage: cut HOST"; host_env "$2" >/dev/null
    ip link set "${2%-*}-h${2##*-}" down ;;
  mend)
    [ $# -eq 2 ] || die "usage: mend HOST"; host_env "$2" >/dev/null
    ip link set "${2%-*}-h${2##*-}" up ;;
  images)
    [ $# -ge 3 ] || die "usage: images SET IMAGE..."
    set=$2; shift 2
    [ -f "$runs/$set/hosts" ] || die "no such set: $set"
    archive=$(mktemp)
    trap 'rm -f "$archive"' EXIT
    docker save "$@" -o "$archive"
    while read -r _ _ docker_host; do
      DOCKER_HOST=$docker_host docker load -q -i "$archive" >/dev/null
    done < "$runs/$set/hosts" ;;
  *) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
