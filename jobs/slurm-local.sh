#!/bin/bash
# A real single-machine Slurm (munge + slurmctld + slurmd on 127.0.0.1) for tests and CI.
#
#   jobs/slurm-local.sh up        install what is missing, write /etc/slurm/slurm.conf, start the
#                                 daemons, wait until the node(s) are idle (idempotent)
#   jobs/slurm-local.sh status    the daemons this script started, and `sinfo`; exit 0 iff all idle
#   jobs/slurm-local.sh selftest  srun + sbatch --wait (+ a 2-rank MPI allreduce with
#                                 $SLURM_LOCAL_PYTHON); needs `up` first
#   jobs/slurm-local.sh down      SIGTERM only the daemons this script started, and wait for them
#
# Needs root (apt-get, /etc/slurm, daemons as root), Debian 12 (bookworm) packages, no systemd.
# Works with no stdin and no terminal (CI=true). See jobs/README-slurm.md and
# /work/shared/notes/slurm-local.md for why each slurm.conf line is there.
#
# Options (environment):
#   SLURM_LOCAL_CPUS=N       CPUs advertised per node (default: the CPUs this process may run on,
#                            `nproc` without OMP_NUM_THREADS, which nproc obeys). More than the cores is
#                            allowed (SlurmdParameters=config_overrides).
#   SLURM_LOCAL_NODES=N      slurmd daemons on this host (default 1). 1: node named
#                            `hostname -s`; N>1: nodes n1..nN, each its own slurmd and port.
#   SLURM_LOCAL_MPI=T        MpiDefault (default pmi2: the PyPI mpich wheel works with srun).
#   SLURM_LOCAL_PMIX=1       also install libpmix-dev (for srun --mpi=pmix, Open MPI).
#   SLURM_LOCAL_KILL_ON_BAD_EXIT=0|1
#                            KillOnBadExit in slurm.conf (default 1): end a step as soon as one
#                            task exits non-zero or is killed by a signal (what a real cluster
#                            usually sets; srun --kill-on-bad-exit=1 per step does the same).
#   SLURM_LOCAL_CLUSTER=NAME run each slurmd inside a node of the emulated cluster NAME
#                            (`jobs/cluster-local.sh --name NAME up --nodes K --link RATE` first):
#                            nodes NAME-n1..NAME-nK at their own addresses and hostnames, so a
#                            job's tasks run in the nodes' namespaces and MPI between nodes crosses
#                            the shaped links (a task prolog exports MPIR_CVAR_CH4_NETMOD=ofi,
#                            FI_PROVIDER=tcp and FI_TCP_IFACE=eth0: OFI, not UCX: see
#                            jobs/README-slurm.md); slurmctld listens on the head's address.
#                            SLURM_LOCAL_NODES and SLURM_LOCAL_CPUS then come from the cluster.
#   SLURM_LOCAL_PYTHON=PATH  a python with mpi4py, for the MPI check of `selftest`.
#   SLURM_LOCAL_TIMEOUT=S    seconds to wait for a daemon / the node to be idle (default 30).
#
# State: /run/slurm-local.started lists "name pid" of the daemons this script started;
# `down` stops only those (never a daemon someone else started).

set -euo pipefail

STATE=/run/slurm-local.started
CONF=/etc/slurm/slurm.conf
# GNU nproc returns OMP_NUM_THREADS when it is set: a caller that pinned its BLAS to one thread
# (hpcnn's own test process does) must not make every node a 1-CPU node.
cores() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
CPUS=${SLURM_LOCAL_CPUS:-$(cores)}
NODES=${SLURM_LOCAL_NODES:-1}
MPI_DEFAULT=${SLURM_LOCAL_MPI:-pmi2}
KILL_ON_BAD_EXIT=${SLURM_LOCAL_KILL_ON_BAD_EXIT:-1}
TIMEOUT=${SLURM_LOCAL_TIMEOUT:-30}
HOST=$(hostname -s)
CLUSTER=${SLURM_LOCAL_CLUSTER:-}
CLUSTER_DIR=/run/hpcnn-cluster-local/$CLUSTER
CTLD_ADDR=127.0.0.1
if [ -n "$CLUSTER" ]; then
  [ -f "$CLUSTER_DIR/conf" ] || { echo "slurm-local: error: no emulated cluster '$CLUSTER' is up (jobs/cluster-local.sh --name $CLUSTER up ...)" >&2; exit 1; }
  NODES=$(. "$CLUSTER_DIR/conf"; echo "$NODES")
  CTLD_ADDR=$(. "$CLUSTER_DIR/conf"; echo "$SUBNET").1
  CPUS=$(awk 'NR == 1 {print split($2, a, ",")}' "$CLUSTER_DIR/cpus")
fi
export DEBIAN_FRONTEND=noninteractive

log() { echo "slurm-local: $*" >&2; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

need_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, /etc/slurm, daemons); try: sudo $0 $*"
}

check_opts() {
  [[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_CPUS must be a positive integer, not '$CPUS'"
  [[ $NODES =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_NODES must be a positive integer, not '$NODES'"
  [[ $KILL_ON_BAD_EXIT =~ ^[01]$ ]] || die "SLURM_LOCAL_KILL_ON_BAD_EXIT must be 0 or 1"
  [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "SLURM_LOCAL_TIMEOUT must be a positive integer"
}

node_names() {
  if [ -n "$CLUSTER" ]; then seq -f "$CLUSTER-n%g" 1 "$NODES"
  elif [ "$NODES" -eq 1 ]; then echo "$HOST"; else seq -f 'n%g' 1 "$NODES"; fi
}

# ---------------------------------------------------------------- install

install_packages() {
  local pkgs=() bin
  for bin in slurmctld slurmd; do [ -x /usr/sbin/$bin ] || pkgs+=("$bin"); done
  command -v sinfo >/dev/null 2>&1 && command -v srun >/dev/null 2>&1 || pkgs+=(slurm-client)
  [ -x /usr/sbin/munged ] && command -v munge >/dev/null 2>&1 || pkgs+=(munge)
  if [ "${SLURM_LOCAL_PMIX:-0}" = 1 ] && ! dpkg -s libpmix-dev >/dev/null 2>&1; then
    pkgs+=(libpmix-dev)
  fi
  [ ${#pkgs[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${pkgs[*]} by hand"
  log "installing ${pkgs[*]} (apt-get, --no-install-recommends)"
  local out
  if ! out=$(apt-get update -qq </dev/null 2>&1); then
    echo "$out" >&2
    die "apt-get update failed (offline? no apt sources?); cannot install ${pkgs[*]}"
  fi
  if ! out=$(apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null 2>&1); then
    echo "$out" | tail -n 20 >&2
    die "apt-get install ${pkgs[*]} failed (see above)"
  fi
  [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmd ] && [ -x /usr/sbin/munged ] \
    || die "packages installed but the daemons are still missing"
}

# ---------------------------------------------------------------- pid bookkeeping

# Alive and really that program (a recycled pid is not ours).
alive() {  # alive PID NAME
  local pid=$1 name=$2
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]
}

record() {  # record NAME PID
  touch "$STATE"
  grep -v "^$1 " "$STATE" >"$STATE.tmp" || true
  echo "$1 $2" >>"$STATE.tmp"
  mv "$STATE.tmp" "$STATE"
}

recorded_pid() {  # recorded_pid NAME -> pid or nothing
  [ -f "$STATE" ] && awk -v n="$1" '$1 == n {print $2}' "$STATE" | tail -n 1 || true
}

unrecord() {  # unrecord NAME
  [ -f "$STATE" ] || return 0
  grep -v "^$1 " "$STATE" >"$STATE.tmp" || true
  mv "$STATE.tmp" "$STATE"
}

# A running daemon of this program, whoever started it: from its pid file.
pid_from_file() {  # pid_from_file FILE NAME
  local pid
  [ -r "$1" ] || return 1
  pid=$(tr -dc '0-9' <"$1")
  alive "$pid" "$2" && echo "$pid"
}

wait_pidfile() {  # wait_pidfile FILE NAME -> pid
  local i pid
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    if pid=$(pid_from_file "$1" "$2"); then echo "$pid"; return 0; fi
    sleep 0.1
  done
  return 1
}

stop_pids() {  # stop_pids "name pid"... : SIGTERM all, then wait (KILL after $TIMEOUT s)
  local entry name pid i left
  for entry in "$@"; do
    read -r name pid <<<"$entry"
    if alive "$pid" "${name%%:*}"; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    left=0
    for entry in "$@"; do
      read -r name pid <<<"$entry"
      alive "$pid" "${name%%:*}" && left=1
    done
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  for entry in "$@"; do
    read -r name pid <<<"$entry"
    if alive "$pid" "${name%%:*}"; then
      log "$name (pid $pid) ignored SIGTERM for ${TIMEOUT}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    unrecord "$name"
  done
}

# ---------------------------------------------------------------- munge

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    install -d -m 0700 -o munge -g munge /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 \
    || die "munged failed to start (see /var/log/munge/munged.log)"
  local pid
  pid=$(wait_pidfile /run/munge/munged.pid munged) || die "munged wrote no pid file"
  record munged "$pid"
  munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munge -n | unmunge fails after starting munged"
}

# ---------------------------------------------------------------- slurm.conf

write_conf() {  # prints "changed" when the file changed
  local mem node i new
  mem=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
  new=$(mktemp)
  {
    echo "# Written by jobs/slurm-local.sh (hpcnn); rewritten by every 'up'."
    echo "ClusterName=ci"
    echo "SlurmctldHost=$HOST($CTLD_ADDR)"
    cat <<'EOF'
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
EnforcePartLimits=ALL
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.log
MinJobAge=4
EOF
    echo "MpiDefault=$MPI_DEFAULT"
    echo "KillOnBadExit=$KILL_ON_BAD_EXIT"
    if [ -n "$CLUSTER" ] || [ "$CPUS" -gt "$(cores)" ]; then echo "SlurmdParameters=config_overrides"; fi
    if [ -n "$CLUSTER" ]; then
      echo "TaskProlog=/etc/slurm/hpcnn-task-prolog.sh"
      i=0
      for node in $(node_names); do
        i=$((i + 1))
        echo "NodeName=$node NodeHostname=$node NodeAddr=$(getent hosts "$node" | awk '{print $1}')" \
             "CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
      done
    elif [ "$NODES" -eq 1 ]; then
      echo "NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
    else
      i=0
      for node in $(node_names); do
        i=$((i + 1))
        echo "NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i))" \
             "CPUs=$CPUS RealMemory=$mem State=UNKNOWN"
      done
    fi
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$new"
  install -d /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  if [ -n "$CLUSTER" ]; then  # tasks' MPI between the emulated nodes over TCP on eth0
    printf '#!/bin/sh\n# Written by jobs/slurm-local.sh (hpcnn): MPI over TCP between emulated nodes.\n%s\n%s\n%s\n' \
      'echo export MPIR_CVAR_CH4_NETMOD=ofi' 'echo export FI_PROVIDER=tcp' \
      'echo export FI_TCP_IFACE=eth0' >/etc/slurm/hpcnn-task-prolog.sh
    chmod 0755 /etc/slurm/hpcnn-task-prolog.sh
  fi
  if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
    rm -f "$new"
  else
    [ -f "$CONF" ] && ! grep -q '^# Written by jobs/slurm-local.sh' "$CONF" \
      && cp "$CONF" "$CONF.before-slurm-local"
    install -m 0644 "$new" "$CONF"
    rm -f "$new"
    echo changed
  fi
}

# ---------------------------------------------------------------- daemons

slurm_entries() {  # the recorded slurm daemons, as "name pid" lines
  [ -f "$STATE" ] && grep -E '^(slurmctld|slurmd:)' "$STATE" || true
}

stop_slurm() {
  local entries=()
  mapfile -t entries < <(slurm_entries)
  [ ${#entries[@]} -gt 0 ] && stop_pids "${entries[@]}"
  return 0
}

start_slurm() {
  local pid node
  if pid=$(pid_from_file /run/slurmctld.pid slurmctld); then
    [ -n "$(recorded_pid slurmctld)" ] || log "slurmctld already running (pid $pid), not ours: left as is"
  else
    /usr/sbin/slurmctld </dev/null >/dev/null 2>&1 || die "slurmctld failed (see /var/log/slurm/slurmctld.log)"
    pid=$(wait_pidfile /run/slurmctld.pid slurmctld) \
      || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
    record slurmctld "$pid"
  fi
  for node in $(node_names); do
    if pid=$(pid_from_file "/run/slurmd-$node.pid" slurmd); then
      [ -n "$(recorded_pid "slurmd:$node")" ] || log "slurmd $node already running (pid $pid), not ours"
      continue
    fi
    if [ -n "$CLUSTER" ]; then  # inside the node: its network, and its own hostname
      # (nsenter, not `ip netns exec`, which remounts /sys without the cgroup slurmd needs)
      # and its own /dev/shm (MPICH names node-local segments after the job step: nodes sharing
      # one /dev/shm would open each other's)
      nsenter --net="/run/netns/$node" unshare --uts --mount --propagation private sh -c \
        'mount -t tmpfs -o mode=1777 hpcnn-shm /dev/shm && hostname "$1" && exec /usr/sbin/slurmd -N "$1"' \
        slurmd "$node" </dev/null >/dev/null 2>&1 \
        || die "slurmd -N $node in its emulated node failed (see /var/log/slurm/slurmd-$node.log)"
    else
      /usr/sbin/slurmd -N "$node" </dev/null >/dev/null 2>&1 \
        || die "slurmd -N $node failed (see /var/log/slurm/slurmd-$node.log)"
    fi
    pid=$(wait_pidfile "/run/slurmd-$node.pid" slurmd) \
      || die "slurmd -N $node did not start (see /var/log/slurm/slurmd-$node.log)"
    record "slurmd:$node" "$pid"
  done
}

all_idle() {  # all_idle [N]: every node idle (and exactly N nodes, when given)
  local states
  states=$(timeout 5 sinfo -h -N -o '%T' </dev/null 2>/dev/null) || return 1
  [ -n "$states" ] && [ "$(echo "$states" | grep -cv '^idle$')" -eq 0 ] \
    && { [ -z "${1:-}" ] || [ "$(echo "$states" | wc -l)" -eq "$1" ]; }
}

wait_idle() {
  local i
  for ((i = 0; i < TIMEOUT * 10; i++)); do
    all_idle "$NODES" && return 0
    sleep 0.1
  done
  timeout 5 sinfo -N -l </dev/null >&2 || true
  die "node(s) not idle after ${TIMEOUT}s (see /var/log/slurm/)"
}

# ---------------------------------------------------------------- commands

cmd_up() {
  need_root up
  check_opts
  local t0=$SECONDS changed
  install_packages
  start_munge
  changed=$(write_conf)
  if [ -n "$changed" ] && [ -n "$(slurm_entries)" ]; then
    log "slurm.conf changed: restarting the daemons this script started"
    stop_slurm
  fi
  start_slurm
  wait_idle
  log "up in $((SECONDS - t0))s: $(node_names | xargs) idle, $CPUS CPUs each, MpiDefault=$MPI_DEFAULT, KillOnBadExit=$KILL_ON_BAD_EXIT"
}

cmd_down() {
  need_root down
  local entries=()
  if [ ! -s "$STATE" ]; then
    log "nothing to stop (no daemon recorded in $STATE)"
    return 0
  fi
  # Slurm daemons first (in parallel), munged last: they talk to it while shutting down.
  stop_slurm
  mapfile -t entries < <([ -f "$STATE" ] && cat "$STATE")
  [ ${#entries[@]} -gt 0 ] && stop_pids "${entries[@]}"
  rm -f "$STATE" "$STATE.tmp"
  log "down"
}

cmd_status() {
  local name pid ok=0
  if [ -s "$STATE" ]; then
    while read -r name pid; do
      if alive "$pid" "${name%%:*}"; then echo "$name pid $pid running"; else echo "$name pid $pid GONE"; ok=1; fi
    done <"$STATE"
  else
    echo "no daemon started by slurm-local.sh"
  fi
  if ! pid_from_file /run/slurmctld.pid slurmctld >/dev/null; then
    echo "slurmctld: not running"
    ok=1
  elif command -v sinfo >/dev/null 2>&1 && timeout 5 sinfo -N -o '%N %T %c %m' </dev/null 2>/dev/null; then
    all_idle || ok=1
  else
    echo "sinfo: no controller answering"
    ok=1
  fi
  return $ok
}

cmd_selftest() {
  local t0=$SECONDS d rc out
  all_idle || die "Slurm is not up with idle node(s): run '$0 up' first"
  d=$(mktemp -d)
  trap 'rm -rf "$d"' RETURN
  out=$(timeout 60 srun -n 1 hostname </dev/null) || die "srun -n 1 hostname failed"
  local want=$HOST
  [ -z "$CLUSTER" ] || want=$(node_names | head -n 1)  # tasks run inside the emulated nodes
  [ "$out" = "$want" ] || die "srun -n 1 hostname printed '$out', expected '$want'"
  printf '#!/bin/bash\necho "task $SLURM_JOB_ID ok"\nexit 3\n' >"$d/job.sh"
  rc=0
  (cd "$d" && timeout 60 sbatch --wait -o out.txt job.sh </dev/null >/dev/null) || rc=$?
  [ $rc -eq 3 ] || die "sbatch --wait of a job ending 'exit 3' returned $rc"
  grep -q '^task .* ok$' "$d/out.txt" || die "sbatch job wrote no output"
  if [ -n "${SLURM_LOCAL_PYTHON:-}" ]; then
    local prog='from mpi4py import MPI; c = MPI.COMM_WORLD; s = c.allreduce(c.Get_rank())
if c.Get_rank() == 0: print(c.Get_size(), s)'
    out=$(timeout 60 srun -n 2 "$SLURM_LOCAL_PYTHON" -c "$prog" </dev/null) \
      || die "srun -n 2 mpi4py allreduce failed"
    [ "$out" = "2 1" ] || die "srun -n 2 allreduce printed '$out', expected '2 1' (one MPI world)"
  fi
  log "selftest passed in $((SECONDS - t0))s (srun, sbatch --wait${SLURM_LOCAL_PYTHON:+, srun MPI})"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  selftest) cmd_selftest ;;
  *) echo "usage: $0 up|down|status|selftest   (options: see the header of this script)" >&2; exit 2 ;;
esac
