#!/usr/bin/env bash
# start-slurm-multinode.sh: bring up a real multi-node Slurm cluster on this one machine, for
# tests of multi-node evaluations. It runs alongside the single-node cluster of start-slurm.sh
# (own config and state dir, own ports, own slurmctld, slurmdbd and MariaDB; only munged and the
# Debian packages are shared, so start-slurm.sh must have run first).
#
# Usage: bash scripts/start-slurm-multinode.sh [--fresh]
#   --fresh  first run `stop-slurm-multinode.sh --wipe` (use it in CI)
#
# Each node is a slurmd in its own network namespace <prefix>-nodeN (own address on a private
# bridge, own hostname nodeN through a UTS namespace, /etc/hosts naming every node, own spool dir);
# files are shared as on a cluster. The bridge lives in a namespace of its own (<prefix>-sw), so
# the host's firewall never sees node-to-node traffic; the host reaches it through one veth,
# <prefix>-host, which carries the controller's address. A process on node2 reaches a server
# on node1 only at node1's address: 127.0.0.1 is each node's own. (Debian's Slurm is built with
# multiple-slurmd support, but those slurmds share one host, one address and one loopback, so a
# server started on one node would answer on all of them.)
#
#   host (slurmctld, slurmdbd, MariaDB)  $SUBNET.1     nodeN (slurmd, jobs)  $SUBNET.(10+N)
#
# Clients use it with SLURM_CONF=$STATE/etc/slurm.conf. $STATE/nodes.tsv lists
# "name<TAB>address<TAB>netns" per node. To run a command on node N outside Slurm:
#   nsenter -t "$(cat $STATE/run/slurmd-nodeN.pid)" -n -u -m -- CMD
#
# Settings (environment variables, all optional):
#   SLURM_MN_NODES    number of nodes, 2..9                                   [2]
#   SLURM_MN_CPUS     CPUs advertised per node                                [4]
#   SLURM_MN_GPUS     fake GRES GPUs per node (copies of /dev/null)           [2]
#   SLURM_MN_STATE    configs (etc/), spool, logs, PID files, MariaDB data    [/var/lib/slurm-multinode]
#   SLURM_MN_PORT     slurmctld port; slurmd uses +1, slurmdbd +2             [6837]
#   SLURM_MN_DB_PORT  TCP port of its private MariaDB (127.0.0.1 only)        [3317]
#   SLURM_MN_SUBNET   first three octets of the nodes' /24                    [10.219.0]
#   SLURM_MN_PREFIX   prefix of the namespaces and the host veth (<= 8 chars) [slmn]
#   SLURM_MN_WAIT_S   seconds to wait for each daemon and for the idle nodes  [60]
# Must run as root. Undone by stop-slurm-multinode.sh (daemons, namespaces, veth, /etc/netns).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = --fresh ]; then
  bash "$here/stop-slurm-multinode.sh" --wipe
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--fresh]" >&2; exit 2
fi

NODES=${SLURM_MN_NODES:-2}
CPUS=${SLURM_MN_CPUS:-4}
GPUS=${SLURM_MN_GPUS:-2}
STATE=${SLURM_MN_STATE:-/var/lib/slurm-multinode}
PORT=${SLURM_MN_PORT:-6837}
DB_PORT=${SLURM_MN_DB_PORT:-3317}
SUBNET=${SLURM_MN_SUBNET:-10.219.0}
PREFIX=${SLURM_MN_PREFIX:-slmn}
WAIT_S=${SLURM_MN_WAIT_S:-60}
CLUSTER=mncluster
CONF_DIR=$STATE/etc
CTLD_HOST=$(hostname -s)
CTLD_ADDR=$SUBNET.1
DB_SOCK=$STATE/mysql-run/mysqld.sock
# every Slurm command and daemon below (and the clients of this cluster) read this config
export SLURM_CONF=$CONF_DIR/slurm.conf

T0=$EPOCHREALTIME
log() { echo "[start-slurm-multinode +$(awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN{printf "%.1f", a-b}')s] $*" >&2; }
die() { echo "[start-slurm-multinode] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
[[ "$NODES" =~ ^[2-9]$ ]] || die "SLURM_MN_NODES must be 2..9, not '$NODES'"
[ ${#PREFIX} -le 8 ] || die "SLURM_MN_PREFIX must be at most 8 characters (interface names)"
for cmd in slurmctld slurmd slurmdbd mariadbd munged; do
  command -v "$cmd" >/dev/null || die "$cmd is missing: run scripts/start-slurm.sh first (it installs the packages)"
done

if ! command -v ip >/dev/null; then   # minimal Debian images lack iproute2
  log "installing iproute2"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
fi

alive() { # alive PIDFILE: the PID in it is a live process (zombies count as dead)
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
wait_for() { # wait_for SECONDS WHAT CMD...: retry CMD every 0.5 s
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "[start-slurm-multinode] timed out after ${t}s waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}
node_addr() { echo "$SUBNET.$((10 + $1))"; }
alive /run/munge/munged.pid || die "munged is not running: start the single-node cluster first (bash scripts/start-slurm.sh)"

mkdir -p "$STATE"/{ctld,log,run,node} "$CONF_DIR"
chmod 755 "$STATE"

# ------------------------------------------------------------------ 1. network
net_parts=$(ip netns list | grep -c "^$PREFIX-" || true)
if [ "$net_parts" = $((NODES + 1)) ] && ip link show "$PREFIX-host" >/dev/null 2>&1; then
  log "network already up ($PREFIX-*)"
else
  [ "$net_parts" = 0 ] || die "a different or half-built network ($PREFIX-*) exists: run scripts/stop-slurm-multinode.sh"
  hosts_file=$(mktemp)
  { printf '127.0.0.1\tlocalhost\n%s\t%s\n' "$CTLD_ADDR" "$CTLD_HOST"
    for i in $(seq 1 "$NODES"); do printf '%s\tnode%s\n' "$(node_addr "$i")" "$i"; done; } > "$hosts_file"
  sw=$PREFIX-sw
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  ip -n "$sw" link add br0 type bridge
  ip -n "$sw" link set br0 up
  ip link add "$PREFIX-host" type veth peer name host netns "$sw"
  ip -n "$sw" link set host master br0 up
  ip addr add "$CTLD_ADDR/24" dev "$PREFIX-host"
  ip link set "$PREFIX-host" up
  for i in $(seq 1 "$NODES"); do
    ns=$PREFIX-node$i
    ip netns add "$ns"
    ip -n "$sw" link add "node$i" type veth peer name eth0 netns "$ns"
    ip -n "$sw" link set "node$i" master br0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" addr add "$(node_addr "$i")/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" route add default via "$CTLD_ADDR"
    # bind-mounted over /etc/hosts on the node (as `ip netns exec` would): node names resolve there
    install -D -m 644 "$hosts_file" "/etc/netns/$ns/hosts"
  done
  rm -f "$hosts_file"
  log "network up: host $CTLD_ADDR, nodes $(node_addr 1)..$(node_addr "$NODES") on a bridge in $sw"
fi
for i in $(seq 1 "$NODES"); do printf 'node%s\t%s\t%s\n' "$i" "$(node_addr "$i")" "$PREFIX-node$i"; done > "$STATE/nodes.tsv"

# ------------------------------------------------------------------ 2. configs
node_mem=$(awk -v n="$NODES" '/MemTotal/ {m = int(($2/1024 - 1024) / n); print (m < 1024 ? 1024 : m)}' /proc/meminfo)
gres_node=""; gres_types=""
if [ "$GPUS" -gt 0 ]; then gres_node=" Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"; fi
cat > "$CONF_DIR/slurm.conf" <<EOF
# generated by scripts/start-slurm-multinode.sh: $NODES-node local cluster, one network namespace per node
ClusterName=$CLUSTER
SlurmctldHost=$CTLD_HOST($CTLD_ADDR)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
SlurmdParameters=config_overrides
MailProg=/bin/true
$gres_types
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTLD_ADDR
AccountingStoragePort=$((PORT + 2))
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
StateSaveLocation=$STATE/ctld
# %n: each node's own spool, PID file and log
SlurmdSpoolDir=$STATE/node/%n
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmdLogFile=$STATE/log/slurmd-%n.log
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
MinJobAge=300
MaxArraySize=1001
EOF
for i in $(seq 1 "$NODES"); do
  echo "NodeName=node$i NodeAddr=$(node_addr "$i") CPUs=$CPUS RealMemory=$node_mem$gres_node State=UNKNOWN" >> "$CONF_DIR/slurm.conf"
done
cat >> "$CONF_DIR/slurm.conf" <<EOF
PartitionName=debug Nodes=node[1-$NODES] Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=node[1-$NODES] MaxTime=INFINITE State=UP
EOF
if [ "$GPUS" -gt 0 ]; then
  mkdir -p "$STATE/fakegpu"
  for g in $(seq 0 $((GPUS - 1))); do
    f="$STATE/fakegpu/gpu$g"
    [ -c "$f" ] || { rm -f "$f"; mknod "$f" c 1 3 2>/dev/null || touch "$f"; }
  done
  printf 'AutoDetect=off\nNodeName=node[1-%s] Name=gpu File=%s/fakegpu/gpu[0-%s]\n' \
    "$NODES" "$STATE" "$((GPUS - 1))" > "$CONF_DIR/gres.conf"
else
  rm -f "$CONF_DIR/gres.conf"
fi
printf 'CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\nConstrainDevices=no\n' > "$CONF_DIR/cgroup.conf"
install -m 600 /dev/stdin "$CONF_DIR/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=$CTLD_ADDR
DbdPort=$((PORT + 2))
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurmlocal
StorageLoc=slurm_acct_db
EOF

# ------------------------------------------------------------------ 3. MariaDB + slurmdbd
DB_DIR=$STATE/mysql
install -d -o mysql -g mysql -m 0755 "$STATE/mysql-run"
install -d -o mysql -g mysql -m 0700 "$STATE/mysql-tmp"
touch "$STATE/log/mariadbd.log"; chown mysql:mysql "$STATE/log/mariadbd.log"
if [ ! -d "$DB_DIR/mysql" ]; then
  install -d -o mysql -g mysql -m 0750 "$DB_DIR"
  TMPDIR=$STATE/mysql-tmp mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=mysql \
    --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed, see $STATE/log/mariadb-install.log"
fi
if ! alive "$STATE/mysql-run/mariadbd.pid"; then
  rm -f "$DB_SOCK"
  TMPDIR=$STATE/mysql-tmp setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
    --tmpdir="$STATE/mysql-tmp" --socket="$DB_SOCK" --pid-file="$STATE/mysql-run/mariadbd.pid" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=64M --innodb-log-file-size=32M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 &
  wait_for "$WAIT_S" mariadb mariadb --no-defaults -S "$DB_SOCK" -u root -e 'SELECT 1' \
    || die "mariadbd did not come up, see $STATE/log/mariadbd.log"
  log "mariadbd started"
fi
mariadb --no-defaults -S "$DB_SOCK" -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmlocal';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
if ! alive "$STATE/run/slurmdbd.pid"; then
  slurmdbd   # daemonizes; finds slurmdbd.conf next to $SLURM_CONF
  wait_for "$WAIT_S" slurmdbd sacctmgr -n list cluster || die "slurmdbd did not come up, see $STATE/log/slurmdbd.log"
  log "slurmdbd started"
fi
sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null

# ------------------------------------------------------------------ 4. slurmctld + one slurmd per node
if ! alive "$STATE/run/slurmctld.pid"; then
  slurmctld -i
  wait_for "$WAIT_S" slurmctld scontrol ping || die "slurmctld did not come up, see $STATE/log/slurmctld.log"
  log "slurmctld started"
fi
for i in $(seq 1 "$NODES"); do
  alive "$STATE/run/slurmd-node$i.pid" && continue
  mkdir -p "$STATE/node/node$i"
  # the node's network namespace, a UTS namespace for its hostname and a mount namespace for its
  # /etc/hosts (not `ip netns exec`: its fresh /sys has no cgroup mount, which slurmd needs)
  nsenter --net="/run/netns/$PREFIX-node$i" unshare --uts --mount --propagation slave -- \
    sh -c 'mount --bind "$2" /etc/hosts && hostname "$1" && exec slurmd' sh "node$i" "/etc/netns/$PREFIX-node$i/hosts"
  wait_for 15 "slurmd on node$i" alive "$STATE/run/slurmd-node$i.pid" \
    || die "slurmd on node$i did not come up, see $STATE/log/slurmd-node$i.log"
  log "slurmd node$i started ($(node_addr "$i"))"
done

# ------------------------------------------------------------------ 5. wait for the nodes
nodes_ready() {
  local idle
  idle=$(sinfo -h -N -t idle,mix,alloc -o %N | sort -u | wc -l)
  [ "$idle" -ge "$NODES" ] && return 0
  scontrol update nodename="node[1-$NODES]" state=resume >/dev/null 2>&1 || true
  return 1
}
wait_for "$WAIT_S" "$NODES idle nodes" nodes_ready \
  || { sinfo -N -l >&2; die "nodes not idle after ${WAIT_S}s, see $STATE/log/slurmd-node*.log"; }
log "cluster up (SLURM_CONF=$SLURM_CONF):"
sinfo -N >&2
