#!/usr/bin/env bash
# start-slurm.sh: bring up a real single-node Slurm cluster on this machine, without systemd,
# for development and CI (Debian 12: Slurm 22.05, munge, MariaDB 10.11).
#
# Usage: bash scripts/start-slurm.sh [--fresh]
#   --fresh  first run `stop-slurm.sh --wipe` (stop our daemons, delete all job and accounting
#            state). Use it in CI: a plain start restores the saved job state of an earlier run,
#            and a job still queued there would start running.
#
# What it does, each step only when needed (so a second run while everything is up changes
# nothing and takes well under a second):
#   1. apt-get install the missing Debian packages (slurmctld slurmd slurm-client munge
#      slurmdbd mariadb-server);
#   2. write slurm.conf, gres.conf, cgroup.conf and slurmdbd.conf;
#   3. start munged;
#   4. start a private MariaDB (own datadir under the state dir, 127.0.0.1:$DB_PORT, /etc/mysql
#      untouched) and slurmdbd, so that `sacct` works (submitit reads job states with sacct);
#   5. start slurmctld and slurmd;
#   6. wait until `sinfo` shows the node idle.
# A daemon is started only if the PID in its PID file is not a live process; stop-slurm.sh
# stops exactly those PIDs. Running daemons are never restarted: if the generated config
# differs from the one the running daemons started with, a warning says to run
# stop-slurm.sh first.
#
# Settings (environment variables, all optional):
#   SLURM_LOCAL_CPUS        CPUs advertised to Slurm; may exceed the real count   [max(nproc, 8)]
#   SLURM_LOCAL_GPUS        fake GRES GPUs (copies of /dev/null); 0 = no GRES     [2]
#   SLURM_LOCAL_STATE       spool, logs, PID files, MariaDB data, fake GPUs        [/var/lib/slurm-local]
#   SLURM_LOCAL_CONF_DIR    where the configs go; /etc/slurm is Slurm's compiled-in
#                           default, so clients need no SLURM_CONF                  [/etc/slurm]
#   SLURM_LOCAL_NODENAME    node name                                              [$(hostname -s)]
#   SLURM_LOCAL_DB_PORT     TCP port of the private MariaDB (127.0.0.1 only)       [3307]
#   SLURM_LOCAL_INSTALL     1 = apt-get install missing packages, 0 = fail instead [1]
#   SLURM_LOCAL_WAIT_S      seconds to wait for each daemon and for the idle node  [60]
#
# Ports: 6817 slurmctld, 6818 slurmd, 6819 slurmdbd, $DB_PORT MariaDB. Must run as root
# (SlurmUser=root; jobs run as the submitting user, root here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = --fresh ]; then
  bash "$here/stop-slurm.sh" --wipe
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--fresh]" >&2; exit 2
fi

nproc_real=$(nproc)
STATE=${SLURM_LOCAL_STATE:-/var/lib/slurm-local}
CONF_DIR=${SLURM_LOCAL_CONF_DIR:-/etc/slurm}
NODE=${SLURM_LOCAL_NODENAME:-$(hostname -s)}
CPUS=${SLURM_LOCAL_CPUS:-$(( nproc_real > 8 ? nproc_real : 8 ))}
GPUS=${SLURM_LOCAL_GPUS:-2}
INSTALL=${SLURM_LOCAL_INSTALL:-1}
WAIT_S=${SLURM_LOCAL_WAIT_S:-60}
DB_PORT=${SLURM_LOCAL_DB_PORT:-3307}   # 3307, so that a system MariaDB on 3306 is untouched
CLUSTER=localcluster
DB_SOCK=$STATE/mysql-run/mysqld.sock  # root setup statements go over this socket

T0=$EPOCHREALTIME
log() { echo "[start-slurm +$(awk -v a="$EPOCHREALTIME" -v b="$T0" 'BEGIN{printf "%.1f", a-b}')s] $*" >&2; }
die() { echo "[start-slurm] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

# ------------------------------------------------------------------ 1. packages
need_pkgs=()
command -v slurmctld >/dev/null || need_pkgs+=(slurmctld)
command -v slurmd    >/dev/null || need_pkgs+=(slurmd)
command -v sbatch    >/dev/null || need_pkgs+=(slurm-client)
command -v munged    >/dev/null || need_pkgs+=(munge)
command -v slurmdbd  >/dev/null || need_pkgs+=(slurmdbd)
command -v mariadbd  >/dev/null || need_pkgs+=(mariadb-server)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: ${need_pkgs[*]} (SLURM_LOCAL_INSTALL=0)"
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Keep the packages' maintainer scripts from starting the daemons themselves. Container
  # images usually ship a policy-rc.d that exits 101; add a temporary one if there is none.
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  [ $tmp_policy = 0 ] || rm -f /usr/sbin/policy-rc.d
fi
log "node=$NODE cpus=$CPUS gpus=$GPUS state=$STATE conf=$CONF_DIR"

# ------------------------------------------------------------------ helpers
alive() { # alive PIDFILE: 0 if the PID in it is a live process. Zombies count as dead (PID 1
          # in some VMs reaps orphans late, and kill -0 still succeeds on a zombie).
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}
wait_for() { # wait_for SECONDS WHAT CMD...: retry CMD every 0.5 s
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || { echo "[start-slurm] timed out after ${t}s waiting for $what" >&2; return 1; }
    sleep 0.5
  done
}
write_conf() { # write_conf FILE MODE < content
  local f=$1 mode=$2 tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat > "$tmp"; chmod "$mode" "$tmp"; mv -f "$tmp" "$f"
}
conf_hash() { # over the configs that exist (no gres.conf without GPUs)
  { cat "$CONF_DIR"/{slurm,gres,cgroup,slurmdbd}.conf 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}
ALREADY=()   # Slurm daemons found running: they keep the config they were started with

mkdir -p "$STATE"/{ctld,d,log,run} "$CONF_DIR"
chmod 755 "$STATE"

# ------------------------------------------------------------------ 2. configs
# (before any daemon: every Slurm client, sacctmgr included, needs slurm.conf)
node_mem=$(awk '/MemTotal/ {m = int($2/1024) - 1024; print (m < 1024 ? 1024 : m)}' /proc/meminfo)
gres_node=""; gres_types=""
if [ "$GPUS" -gt 0 ]; then
  gres_node=" Gres=gpu:$GPUS"; gres_types="GresTypes=gpu"
fi

write_conf "$CONF_DIR/slurm.conf" 644 <<EOF
# generated by scripts/start-slurm.sh: single-node local cluster for development and CI
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# no cgroups: works in containers and VMs without delegated cgroups
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# start batch jobs at the next scheduler tick (~1 s) instead of up to 3 s later
SchedulerParameters=batch_sched_delay=0
ReturnToService=2
# take CPUs/RealMemory from this file even when they exceed the hardware
SlurmdParameters=config_overrides
ScronParameters=enable
MailProg=/bin/true
$gres_types
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
# cancelled jobs get SIGKILL 5 s after SIGTERM (Slurm's default is 30 s)
KillWait=5
MinJobAge=300
MaxJobCount=100000
# array indices 0..1000 (set explicitly: tools read it from scontrol show config)
MaxArraySize=1001
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$node_mem$gres_node State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF

if [ "$GPUS" -gt 0 ]; then
  # The gpu GRES plugin drops GPUs without a device file (`Count=` alone leaves the node
  # INVAL), so each fake GPU gets its own character device: a copy of /dev/null (1:3).
  mkdir -p "$STATE/fakegpu"
  for i in $(seq 0 $((GPUS - 1))); do
    f="$STATE/fakegpu/gpu$i"
    [ -c "$f" ] || { rm -f "$f"; mknod "$f" c 1 3 2>/dev/null || touch "$f"; }
  done
  write_conf "$CONF_DIR/gres.conf" 644 <<EOF
# generated by scripts/start-slurm.sh: fake GPUs, no autodetection
AutoDetect=off
NodeName=$NODE Name=gpu File=$STATE/fakegpu/gpu[0-$((GPUS - 1))]
EOF
else
  rm -f "$CONF_DIR/gres.conf"
fi
# slurmd loads its cgroup plugin at start-up even so; nothing is constrained
write_conf "$CONF_DIR/cgroup.conf" 644 <<EOF
CgroupAutomount=no
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF

# mode 600: slurmdbd refuses a world-readable file (it holds the DB password)
write_conf "$CONF_DIR/slurmdbd.conf" 600 <<EOF
# generated by scripts/start-slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
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

# ------------------------------------------------------------------ 3. munge
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
install -d -o munge -g munge -m 0700 /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating munge key"
  if command -v mungekey >/dev/null; then
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if alive /run/munge/munged.pid; then
  log "munged already running (pid $(cat /run/munge/munged.pid))"
else
  rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
  runuser -u munge -- /usr/sbin/munged   # forks; PID file /run/munge/munged.pid
  wait_for 10 munge munge -n || die "munged did not come up, see /var/log/munge/munged.log"
  log "munged started (pid $(cat /run/munge/munged.pid))"
fi

# ------------------------------------------------------------------ 4. MariaDB + slurmdbd
DB_DIR=$STATE/mysql
install -d -o mysql -g mysql -m 0755 "$STATE/mysql-run"
# its own temp dir too: a TMPDIR inherited from the caller may not be writable by mysql
install -d -o mysql -g mysql -m 0700 "$STATE/mysql-tmp"
# mariadbd runs as mysql: it cannot create its log in the root-owned log dir (it would die silently)
touch "$STATE/log/mariadbd.log"; chown mysql:mysql "$STATE/log/mariadbd.log"
if [ ! -d "$DB_DIR/mysql" ]; then
  log "initialising the MariaDB datadir"
  install -d -o mysql -g mysql -m 0750 "$DB_DIR"
  TMPDIR=$STATE/mysql-tmp mariadb-install-db --no-defaults --datadir="$DB_DIR" --user=mysql \
    --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 \
    || die "mariadb-install-db failed, see $STATE/log/mariadb-install.log"
fi
if alive "$STATE/mysql-run/mariadbd.pid"; then
  log "mariadbd already running (pid $(cat "$STATE/mysql-run/mariadbd.pid"))"
else
  rm -f "$DB_SOCK"
  # --no-defaults: ignore /etc/mysql entirely
  TMPDIR=$STATE/mysql-tmp setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
    --tmpdir="$STATE/mysql-tmp" \
    --socket="$DB_SOCK" --pid-file="$STATE/mysql-run/mariadbd.pid" \
    --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
    --log-error="$STATE/log/mariadbd.log" \
    --innodb-buffer-pool-size=128M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
    </dev/null >/dev/null 2>&1 &
  wait_for "$WAIT_S" mariadb mariadb --no-defaults -S "$DB_SOCK" -u root -e 'SELECT 1' \
    || die "mariadbd did not come up, see $STATE/log/mariadbd.log"
  log "mariadbd started (pid $(cat "$STATE/mysql-run/mariadbd.pid"))"
fi
mariadb --no-defaults -S "$DB_SOCK" -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurmlocal';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF

if alive "$STATE/run/slurmdbd.pid"; then
  ALREADY+=(slurmdbd)
  log "slurmdbd already running (pid $(cat "$STATE/run/slurmdbd.pid"))"
else
  slurmdbd   # daemonizes
  wait_for "$WAIT_S" slurmdbd sacctmgr -n list cluster || die "slurmdbd did not come up, see $STATE/log/slurmdbd.log"
  log "slurmdbd started (pid $(cat "$STATE/run/slurmdbd.pid"))"
fi
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null
fi

# ------------------------------------------------------------------ 5. slurmctld + slurmd
if alive "$STATE/run/slurmctld.pid"; then
  ALREADY+=(slurmctld)
  log "slurmctld already running (pid $(cat "$STATE/run/slurmctld.pid"))"
else
  slurmctld -i   # daemonizes; -i: ignore unreadable state files
  wait_for "$WAIT_S" slurmctld scontrol ping || die "slurmctld did not come up, see $STATE/log/slurmctld.log"
  log "slurmctld started (pid $(cat "$STATE/run/slurmctld.pid"))"
fi
if alive "$STATE/run/slurmd.pid"; then
  ALREADY+=(slurmd)
  log "slurmd already running (pid $(cat "$STATE/run/slurmd.pid"))"
else
  nflag=()
  [ "$NODE" = "$(hostname -s)" ] || nflag=(-N "$NODE")
  slurmd "${nflag[@]}"   # daemonizes
  wait_for 15 slurmd alive "$STATE/run/slurmd.pid" || die "slurmd did not come up, see $STATE/log/slurmd.log"
  log "slurmd started (pid $(cat "$STATE/run/slurmd.pid"))"
fi

# ------------------------------------------------------------------ 6. wait for the node
node_ready() {
  local s; s=$(sinfo -h -n "$NODE" -o %t 2>/dev/null | head -1)
  case "$s" in idle|mix|alloc) return 0 ;; esac
  # a node left DOWN or DRAINED by an earlier run: resume it
  case "$s" in down*|drain*|drng*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;; esac
  return 1
}
wait_for "$WAIT_S" "node $NODE" node_ready \
  || { sinfo -N -l >&2; die "node $NODE not idle after ${WAIT_S}s, see $STATE/log/slurmd.log"; }
# conf.sha256 records the config the running daemons were started with
if [ ${#ALREADY[@]} -eq 0 ]; then
  conf_hash > "$STATE/run/conf.sha256"
elif [ "$(conf_hash)" != "$(cat "$STATE/run/conf.sha256" 2>/dev/null)" ]; then
  log "WARNING: the config differs from the one ${ALREADY[*]} started with, which they keep using;" \
      "run 'bash scripts/stop-slurm.sh' and then this script again to apply it"
fi
log "cluster up:"
sinfo >&2
