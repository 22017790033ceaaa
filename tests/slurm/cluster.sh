#!/usr/bin/env bash
# A real single-node Slurm cluster (slurmctld + slurmd + slurmdbd + munge) for the test suite, all state in one
# directory. Verified facts behind every setting: ../shared/notes/slurm-single-node.md (founders' notes).
#
#   bash tests/slurm/cluster.sh up      # prints `export SLURM_CONF=...`; also written to $B/env
#   bash tests/slurm/cluster.sh down
#   bash tests/slurm/cluster.sh status
#
# Environment: SAEV_SLURM_DIR (default /tmp/saev-ops-slurm; .ci/run gives each run a directory of its own). The
# daemons listen on free ports picked at bring-up (written to $B/ports), so two clusters on one machine (two CI runs)
# never meet. MaxArraySize is 11 (SAEV_SLURM_MAX_ARRAY), so the tests exercise saev-ops' array chunking; partition
# `held` is DOWN: jobs sent there queue and never start. MaxJobCount 50,000 and MinJobAge 30 s leave room for a
# 10,000-task sweep after others were cancelled (a cancelled task counts until MinJobAge passes). Installs Debian's slurm-wlm, slurmdbd and munge when missing
# (root). Uses the MariaDB server on 127.0.0.1:3306 (root, empty password) with a database unique to this bring-up, or
# starts a private one in $B when none answers.
set -euo pipefail
B="${SAEV_SLURM_DIR:-/tmp/saev-ops-slurm}"
CMD="${1:-up}"
log() { printf '[slurm] %s\n' "$*" >&2; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  log "installing slurm-wlm slurmdbd munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmdbd munge mariadb-client >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local secs="$1" what="$2"; shift 2
  for _ in $(seq 1 $((secs * 10))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  log "timed out waiting for $what"; return 1
}

kill_pidfile() {
  local f="$1"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f" 2>/dev/null || true)"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  if [ -f "$B/etc/slurm.conf" ]; then
    export SLURM_CONF="$B/etc/slurm.conf"
    scancel --user=root --full >/dev/null 2>&1 || true
  fi
  kill_pidfile "$B/run/slurmd.pid"
  kill_pidfile "$B/run/slurmctld.pid"
  kill_pidfile "$B/run/slurmdbd.pid"
  if [ -f "$B/dbname" ]; then
    mariadb -h127.0.0.1 -P3306 -uroot -e "DROP DATABASE IF EXISTS \`$(cat "$B/dbname")\`" >/dev/null 2>&1 || true
  fi
  kill_pidfile "$B/run/mysqld.pid"
  kill_pidfile "$B/run/munged.pid"
  rm -rf "$B"
}

up() {
  install_packages
  down
  mkdir -p "$B"/{etc,state,spool,log,run,munge,mysql}
  chmod 0755 "$B/munge"
  # 1. munge on its own socket
  mungekey -c -k "$B/munge/munge.key" -b 1024 >/dev/null 2>&1 || \
    dd if=/dev/urandom of="$B/munge/munge.key" bs=1 count=1024 2>/dev/null
  chmod 0400 "$B/munge/munge.key"
  munged --key-file="$B/munge/munge.key" --socket="$B/munge/munge.socket" --pid-file="$B/run/munged.pid" \
    --log-file="$B/log/munged.log" --seed-file="$B/munge/munge.seed" --force
  wait_for 10 munge sh -c "munge -S '$B/munge/munge.socket' -n | unmunge -S '$B/munge/munge.socket'"
  # 2. MariaDB: the machine's server if it answers, else a private one
  if mariadb-admin -h127.0.0.1 -P3306 -uroot ping >/dev/null 2>&1; then
    log "using MariaDB on 127.0.0.1:3306"
  else
    log "no MariaDB on 127.0.0.1:3306; starting a private server in $B/mysql"
    mariadb-install-db --no-defaults --datadir="$B/mysql" --user=root --auth-root-authentication-method=normal \
      --skip-test-db >/dev/null
    (mariadbd --no-defaults --datadir="$B/mysql" --user=root --bind-address=127.0.0.1 --port=3306 \
      --socket="$B/run/mysqld.sock" --pid-file="$B/run/mysqld.pid" --log-error="$B/log/mysqld.err" \
      --skip-log-bin >/dev/null 2>&1 &)
    wait_for 30 mariadb mariadb-admin -h127.0.0.1 -P3306 -uroot ping
  fi
  local db="slurm_acct_saev_$(date +%s)_$$"
  echo "$db" > "$B/dbname"
  # free ports for slurmctld, slurmd and slurmdbd (the defaults 6817-6819 would be shared by every cluster here)
  local ports; ports="$(python3 -c 'import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
  read -r CTLD_PORT SLURMD_PORT DBD_PORT <<< "$ports"
  echo "$ports" > "$B/ports"
  # 3. configuration (a unique cluster name too: job ids restart at 1 with fresh state)
  cat > "$B/etc/slurm.conf" <<CONF
ClusterName=saev$(date +%s | tail -c 6)
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$B/munge/munge.socket,cred_expire=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$B/munge/munge.socket
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
MaxArraySize=${SAEV_SLURM_MAX_ARRAY:-11}
MaxJobCount=50000
MinJobAge=30
StateSaveLocation=$B/state
SlurmdSpoolDir=$B/spool/%n
SlurmctldPidFile=$B/run/slurmctld.pid
SlurmdPidFile=$B/run/slurmd.pid
SlurmctldLogFile=$B/log/slurmctld.log
SlurmdLogFile=$B/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=256
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
KillWait=5
MailProg=/bin/true
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=8 RealMemory=8192 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=held Nodes=ALL Default=NO MaxTime=INFINITE State=DOWN
CONF
  cat > "$B/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$B/munge/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$B/log/slurmdbd.log
PidFile=$B/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=root
StorageLoc=$db
CONF
  chmod 600 "$B/etc/slurmdbd.conf"
  export SLURM_CONF="$B/etc/slurm.conf"
  # 4. daemons, each waited for
  slurmdbd
  wait_for 30 slurmdbd sacctmgr -n show cluster
  slurmctld
  wait_for 30 slurmctld sh -c "scontrol ping | grep -q UP"
  slurmd -N localhost
  wait_for 30 slurmd sh -c "sinfo -h -n localhost -o %t | grep -Eq 'idle|mix|alloc'"
  echo "export SLURM_CONF=$SLURM_CONF" > "$B/env"
  log "cluster up: $(sinfo -h | head -n1)"
  echo "export SLURM_CONF=$SLURM_CONF"
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) SLURM_CONF="$B/etc/slurm.conf" scontrol ping && SLURM_CONF="$B/etc/slurm.conf" sinfo ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
