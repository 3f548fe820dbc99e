#!/bin/bash
# Several "nodes" on one machine, joined by real, shaped network links: an emulated cluster.
#
#   jobs/cluster-local.sh up --nodes K --link RATE [--cpus auto|all] [--subnet 10.A.B]
#   jobs/cluster-local.sh mpiexec [-ppn P] -n N -- CMD ARGS...
#   jobs/cluster-local.sh status
#   jobs/cluster-local.sh down
#   (every command takes --name NAME, anywhere before `--`; default: $HPCNN_CLUSTER, else `hpcnn`)
#
# `up` makes K network namespaces NAME-n1 .. NAME-nK (the "nodes"), each with an `eth0` joined to
# a Linux bridge NAME-br in the root namespace. The bridge's address is the head (NAME-head, the
# .1 of the subnet); node i is .(i+1). Every node's link is shaped to RATE in both directions with
# a token bucket (`tc qdisc ... tbf rate RATE`: RATE is a tc rate such as 1gbit, 10gbit, 500mbit,
# or `none` for an unshaped veth). netem is not available on these machines, so no delay is
# injected: latency is what the veth and bridge give (tens of microseconds). The node names and
# the head are added to /etc/hosts. Each node gets a share of the machine's CPUs (--cpus auto:
# node i runs on CPUs i-1, i-1+K, ... of the online ones, round robin when K > CPUs; --cpus all:
# every node sees every CPU), which its ranks get as their affinity mask, so threads per rank
# follow the node's cores as on a real cluster.
#
# `mpiexec` runs Hydra's mpiexec ($MPIEXEC, else the venv's .venv/bin/mpiexec, else the one on
# PATH) on the nodes of the cluster: N ranks, P per node (default: N over the K nodes, rounded
# up), filling NAME-n1 first. It passes
#     -localhost NAME-head -launcher ssh -launcher-exec jobs/ns-launch -hosts NAME-n1,... -ppn P
# so Hydra's proxies start through jobs/ns-launch inside the node's namespace, in their own UTS
# namespace whose hostname is the node's name (MPI_Get_processor_name, MPI's shared-memory split
# and hpcnn's ranks-per-node all see distinct hosts), with a /dev/shm of the node's own (a private
# tmpfs: MPICH names its node-local segments after the job, so nodes sharing one /dev/shm would
# open each other's), and pinned to the node's CPUs. Traffic
# between nodes is forced over TCP on eth0, across the shaped link (MPICH's UCX netmod with
# UCX_TLS=tcp,self and UCX_NET_DEVICES=eth0; otherwise UCX would notice that the "nodes" share a
# machine and use shared memory); ranks on the same node keep MPICH's own shared memory. Set
# HPCNN_CLUSTER_NETMOD=ofi to use the OFI netmod with its tcp provider instead. Everything after
# `--` is the command each rank runs; mpiexec's exit status is returned.
#     sudo jobs/cluster-local.sh up --nodes 2 --link 1gbit
#     sudo jobs/cluster-local.sh mpiexec -ppn 1 -n 2 -- .venv/bin/python -m hpcnn.train --net mlp
#     sudo jobs/cluster-local.sh down
# Several clusters may be up at once under different --name values (each its own subnet).
#
# `down` stops any process still running in the cluster's namespaces (SIGTERM, then SIGKILL after
# 3 s), deletes the namespaces, veths and bridge `up` made, and removes the /etc/hosts lines it
# added, from the record `up` kept in /run/hpcnn-cluster-local/NAME/. `status` prints the clusters
# and checks each is whole (exit 0 iff it is). Root only (namespaces, links, /etc/hosts).
# What was seen to work here and why: /work/shared/notes/emulated-cluster.md, jobs/README-slurm.md.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
RUN=/run/hpcnn-cluster-local
NAME=${HPCNN_CLUSTER:-hpcnn}
TAG="# hpcnn-cluster-local"

log() { echo "cluster-local: $*" >&2; }
die() { echo "cluster-local: error: $*" >&2; exit 2; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "'$1' needs root (network namespaces, links, /etc/hosts); try: sudo $0 $1 ..."
  command -v ip >/dev/null 2>&1 || die "no 'ip' command (apt-get install iproute2)"
  command -v unshare >/dev/null 2>&1 || die "no 'unshare' command (apt-get install util-linux)"
}

check_name() {
  # Interface names are at most 15 characters: NAME-v999 must fit.
  [[ $NAME =~ ^[a-z][a-z0-9]{0,9}$ ]] \
    || die "--name must be 1-10 lowercase letters or digits, starting with a letter, not '$NAME'"
}

dir() { echo "$RUN/$NAME"; }

# ---------------------------------------------------------------- /etc/hosts

hosts_add() {  # hosts_add ADDR HOSTNAME (under the global lock)
  local tmp
  tmp=$(mktemp)
  cat /etc/hosts >"$tmp"
  printf '%s %s %s:%s\n' "$1" "$2" "$TAG" "$NAME" >>"$tmp"
  cat "$tmp" >/etc/hosts  # in place: /etc/hosts may be a bind mount
  rm -f "$tmp"
}

hosts_remove() {  # every line this cluster added
  local tmp
  tmp=$(mktemp)
  grep -v -- " $TAG:$NAME\$" /etc/hosts >"$tmp" || true
  cat "$tmp" >/etc/hosts
  rm -f "$tmp"
}

# ---------------------------------------------------------------- up

made() { echo "$*" >>"$(dir)/made"; }

free_subnet() {  # the first 10.77.X (X = 0..255) that no interface address or route uses
  local x used
  used=$(ip -4 -o addr show; ip -4 route show)
  for x in $(seq 0 255); do
    if ! grep -q "10\.77\.$x\." <<<"$used" && ! grep -qs "^SUBNET=10\.77\.$x\$" "$RUN"/*/conf; then
      echo "10.77.$x"
      return 0
    fi
  done
  return 1
}

cpu_lists() {  # cpu_lists K MODE -> K lines, the CPU list of each node
  local k=$1 mode=$2 cpus=() i j list
  mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' \
    | awk -F- '{ if (NF == 2) for (c = $1; c <= $2; c++) print c; else print $1 }')
  for ((i = 0; i < k; i++)); do
    if [ "$mode" = all ]; then
      list=$(IFS=,; echo "${cpus[*]}")
    elif [ "$k" -ge ${#cpus[@]} ]; then
      list=${cpus[$((i % ${#cpus[@]}))]}
    else
      list=""
      for ((j = i; j < ${#cpus[@]}; j += k)); do list+="${list:+,}${cpus[$j]}"; done
    fi
    echo "$list"
  done
}

cmd_up() {
  local k="" rate="" cpumode=auto subnet="" i node veth addr burst
  while [ $# -gt 0 ]; do
    case "$1" in
      --nodes) k=${2:-}; shift 2 || die "--nodes needs a value" ;;
      --link) rate=${2:-}; shift 2 || die "--link needs a value" ;;
      --cpus) cpumode=${2:-}; shift 2 || die "--cpus needs a value" ;;
      --subnet) subnet=${2:-}; shift 2 || die "--subnet needs a value" ;;
      *) die "up: unknown option '$1' (usage: up --nodes K --link RATE [--cpus auto|all] [--subnet 10.A.B])" ;;
    esac
  done
  need_root up
  check_name
  command -v tc >/dev/null 2>&1 || die "no 'tc' command (apt-get install iproute2)"
  [[ $k =~ ^[1-9][0-9]*$ ]] && [ "$k" -le 250 ] || die "--nodes must be an integer from 1 to 250, not '$k'"
  [[ $rate =~ ^(none|[0-9]+(\.[0-9]+)?([kmgt]?bit|[kmgt]?bps))$ ]] \
    || die "--link must be a tc rate such as 1gbit, 10gbit, 500mbit, or none; not '$rate'"
  [[ $cpumode =~ ^(auto|all)$ ]] || die "--cpus must be auto or all, not '$cpumode'"
  [ -z "$subnet" ] || [[ $subnet =~ ^10\.([0-9]{1,3})\.([0-9]{1,3})$ ]] \
    || die "--subnet must look like 10.A.B (a /24 of 10.0.0.0/8), not '$subnet'"
  mkdir -p "$RUN"
  exec 9>"$RUN/.lock"
  flock 9
  if [ -f "$(dir)/conf" ]; then
    # shellcheck disable=SC1091
    local want="NODES=$k RATE=$rate"
    if [ "$(. "$(dir)/conf"; echo "NODES=$NODES RATE=$RATE")" = "$want" ] && cmd_check >/dev/null 2>&1; then
      log "cluster '$NAME' is already up ($want)"
      return 0
    fi
    die "cluster '$NAME' is already up, or half made, with other settings: run '$0 --name $NAME down' first"
  fi
  [ -n "$subnet" ] || subnet=$(free_subnet) || die "no free subnet 10.77.X.0/24 left"
  if ip -4 -o addr show | grep -q " $subnet\." ; then die "subnet $subnet.0/24 is in use here"; fi
  for ((i = 1; i <= k; i++)); do
    ip netns list | grep -q "^$NAME-n$i\b" && die "a namespace $NAME-n$i exists already (not made by this script?)"
  done
  ip link show "$NAME-br" >/dev/null 2>&1 && die "a link $NAME-br exists already (not made by this script?)"
  mkdir -p "$(dir)"
  : >"$(dir)/made"
  trap 'log "up failed: removing what it made"; undo; exit 1' ERR
  # A token bucket: bursts of at least 64 KiB (one GSO packet) and 1 ms at the rate.
  burst=64kb
  if [ "$rate" != none ]; then
    local bits
    bits=$(tc_rate_bits "$rate")
    [ "$bits" -gt 524288000 ] && burst="$((bits / 8 / 1000))b"
  fi
  ip link add "$NAME-br" type bridge
  made link "$NAME-br"
  ip addr add "$subnet.1/24" dev "$NAME-br"
  ip link set "$NAME-br" up
  hosts_add "$subnet.1" "$NAME-head"
  made hosts
  local lists=()
  mapfile -t lists < <(cpu_lists "$k" "$cpumode")
  for ((i = 1; i <= k; i++)); do
    node=$NAME-n$i
    veth=$NAME-v$i
    addr=$subnet.$((i + 1))
    ip netns add "$node"
    made netns "$node"
    ip link add "$veth" type veth peer name eth0 netns "$node"
    made link "$veth"
    ip link set "$veth" master "$NAME-br"
    ip link set "$veth" up
    ip -n "$node" link set lo up
    ip -n "$node" addr add "$addr/24" dev eth0
    ip -n "$node" link set eth0 up
    ip -n "$node" route add default via "$subnet.1"
    if [ "$rate" != none ]; then  # both directions: out of the node, and into it
      ip netns exec "$node" tc qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 50ms
      tc qdisc replace dev "$veth" root tbf rate "$rate" burst "$burst" latency 50ms
    fi
    hosts_add "$addr" "$node"
    echo "$node ${lists[$((i - 1))]}" >>"$(dir)/cpus"
  done
  {
    echo "NODES=$k"
    echo "RATE=$rate"
    echo "SUBNET=$subnet"
    echo "CPUS=$cpumode"
  } >"$(dir)/conf"
  trap - ERR
  log "cluster '$NAME' up: $k node(s) $NAME-n1..$NAME-n$k on $subnet.0/24, head $NAME-head ($subnet.1), link $rate each way"
}

tc_rate_bits() {  # 1gbit -> bits per second (bps units are bytes per second in tc)
  awk -v r="$1" 'BEGIN {
    n = r + 0; u = substr(r, length(n "") + 1); m = 1
    if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9; else if (u ~ /^t/) m = 1e12
    if (u ~ /bps$/) m *= 8
    printf "%d", n * m }'
}

# ---------------------------------------------------------------- down

stop_node_processes() {  # processes left in the cluster's namespaces (started by `mpiexec`)
  local ns pids=() i
  for ns in "$@"; do
    mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null || true)
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  log "stopping ${#pids[@]} process(es) still running on the nodes: ${pids[*]}"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

undo() {  # remove what $(dir)/made lists, last made first
  local lines=() n what arg nss=()
  [ -f "$(dir)/made" ] && mapfile -t lines <"$(dir)/made"
  for ((n = ${#lines[@]} - 1; n >= 0; n--)); do
    read -r what arg <<<"${lines[$n]}"
    [ "$what" = netns ] && nss+=("$arg")
  done
  [ ${#nss[@]} -gt 0 ] && stop_node_processes "${nss[@]}"
  for ((n = ${#lines[@]} - 1; n >= 0; n--)); do
    read -r what arg <<<"${lines[$n]}"
    case "$what" in
      netns) ip netns del "$arg" 2>/dev/null || log "could not delete namespace $arg" ;;
      link) if ip link show "$arg" >/dev/null 2>&1; then ip link del "$arg" || log "could not delete link $arg"; fi ;;
      hosts) hosts_remove ;;
    esac
  done
  rm -rf "$(dir)"
}

cmd_down() {
  [ $# -eq 0 ] || die "down takes no arguments"
  need_root down
  check_name
  mkdir -p "$RUN"
  exec 9>"$RUN/.lock"
  flock 9
  if [ ! -d "$(dir)" ]; then
    log "cluster '$NAME' is not up (nothing recorded in $(dir))"
    return 0
  fi
  undo
  log "cluster '$NAME' down"
}

# ---------------------------------------------------------------- status

cmd_check() {  # the cluster $NAME is whole: every namespace, link, address and hosts line there
  local NODES RATE SUBNET CPUS i ok=0 node
  # shellcheck disable=SC1091
  . "$(dir)/conf"
  ip link show "$NAME-br" >/dev/null 2>&1 || { echo "  missing: bridge $NAME-br"; ok=1; }
  grep -q " $NAME-head $TAG:$NAME\$" /etc/hosts || { echo "  missing: /etc/hosts line for $NAME-head"; ok=1; }
  for ((i = 1; i <= NODES; i++)); do
    node=$NAME-n$i
    if ! ip netns exec "$node" ip -4 -o addr show dev eth0 2>/dev/null | grep -q " $SUBNET\.$((i + 1))/"; then
      echo "  missing: $node or its eth0 address $SUBNET.$((i + 1))"
      ok=1
    elif [ "$RATE" != none ] && ! ip netns exec "$node" tc qdisc show dev eth0 | grep -q "^qdisc tbf"; then
      echo "  missing: the tbf qdisc on $node's eth0"
      ok=1
    fi
    grep -q " $node $TAG:$NAME\$" /etc/hosts || { echo "  missing: /etc/hosts line for $node"; ok=1; }
  done
  return $ok
}

cmd_status() {
  [ $# -eq 0 ] || die "status takes no arguments"
  local d any=0 ok=0 NODES RATE SUBNET CPUS node cpus
  for d in "$RUN"/*/; do
    [ -f "$d/conf" ] || continue
    NAME=$(basename "$d")
    [ -n "${WANT_NAME:-}" ] && [ "$NAME" != "$WANT_NAME" ] && continue
    any=1
    # shellcheck disable=SC1091
    . "$d/conf"
    echo "cluster $NAME: $NODES node(s), link $RATE, subnet $SUBNET.0/24, head $NAME-head ($SUBNET.1)"
    while read -r node cpus; do
      echo "  $node $(getent hosts "$node" | awk '{print $1}') cpus $cpus" \
           "processes $(ip netns pids "$node" 2>/dev/null | wc -l)"
    done <"$d/cpus"
    if cmd_check; then echo "  whole"; else ok=1; fi
  done
  if [ $any -eq 0 ]; then
    echo "no emulated cluster up${WANT_NAME:+ named $WANT_NAME}"
    return 1
  fi
  return $ok
}

# ---------------------------------------------------------------- mpiexec

cmd_mpiexec() {
  local n="" ppn="" k NODES RATE SUBNET CPUS hosts i mpiexec netmod env=()
  while [ $# -gt 0 ]; do
    case "$1" in
      -n|-np) n=${2:-}; shift 2 || die "-n needs a value" ;;
      -ppn) ppn=${2:-}; shift 2 || die "-ppn needs a value" ;;
      --) shift; break ;;
      *) die "mpiexec: unknown option '$1' (usage: mpiexec [-ppn P] -n N -- CMD ARGS...)" ;;
    esac
  done
  [ $# -gt 0 ] || die "mpiexec: no command after '--' (usage: mpiexec [-ppn P] -n N -- CMD ARGS...)"
  need_root mpiexec
  check_name
  [ -f "$(dir)/conf" ] || die "no emulated cluster '$NAME' is up: run '$0 up --nodes K --link RATE' first"
  # shellcheck disable=SC1091
  . "$(dir)/conf"
  k=$NODES
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "-n must be a positive integer, not '$n'"
  [ -n "$ppn" ] || ppn=$(((n + k - 1) / k))
  [[ $ppn =~ ^[1-9][0-9]*$ ]] || die "-ppn must be a positive integer, not '$ppn'"
  [ "$n" -le $((ppn * k)) ] || die "-n $n does not fit on $k node(s) at -ppn $ppn"
  hosts=""
  for ((i = 1; i <= (n + ppn - 1) / ppn; i++)); do hosts+="${hosts:+,}$NAME-n$i"; done
  mpiexec=${MPIEXEC:-}
  if [ -z "$mpiexec" ]; then
    if [ -x "$REPO/.venv/bin/mpiexec" ]; then mpiexec=$REPO/.venv/bin/mpiexec
    else mpiexec=$(command -v mpiexec) || die "no mpiexec: set MPIEXEC or run 'make install'"; fi
  fi
  netmod=${HPCNN_CLUSTER_NETMOD:-ucx}
  case "$netmod" in
    ucx) env=(-genv MPIR_CVAR_CH4_NETMOD ucx -genv UCX_TLS tcp,self -genv UCX_NET_DEVICES eth0) ;;
    ofi) env=(-genv MPIR_CVAR_CH4_NETMOD ofi -genv FI_PROVIDER tcp -genv FI_TCP_IFACE eth0) ;;
    *) die "HPCNN_CLUSTER_NETMOD must be ucx or ofi, not '$netmod'" ;;
  esac
  export HPCNN_CLUSTER_DIR
  HPCNN_CLUSTER_DIR=$(dir)
  exec "$mpiexec" -localhost "$NAME-head" -launcher ssh -launcher-exec "$HERE/ns-launch" \
    -hosts "$hosts" -ppn "$ppn" -n "$n" "${env[@]}" -genv HPCNN_CLUSTER "$NAME" \
    -genv HPCNN_CLUSTER_LINK "$RATE" "$@"
}

# ---------------------------------------------------------------- main

args=()
cmd=""
WANT_NAME=""
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME=${2:-}; WANT_NAME=$NAME; shift 2 || die "--name needs a value" ;;
    --) args+=("$@"); break ;;
    *) if [ -z "$cmd" ]; then cmd=$1; else args+=("$1"); fi; shift ;;
  esac
done
case "$cmd" in
  up) cmd_up "${args[@]}" ;;
  down) cmd_down "${args[@]}" ;;
  status) cmd_status "${args[@]}" ;;
  mpiexec) cmd_mpiexec "${args[@]}" ;;
  *) echo "usage: $0 [--name NAME] up --nodes K --link RATE | mpiexec [-ppn P] -n N -- CMD... | status | down" >&2
     echo "       (see the header of this script)" >&2
     exit 2 ;;
esac
