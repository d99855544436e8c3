#!/usr/bin/env bash
# A throwaway PostgreSQL server on loopback for the recorder's tests.
#
#   e2e/postgres.sh up      install PostgreSQL if missing, initdb, start, create db and user
#   e2e/postgres.sh down    stop the server and remove its data
#   e2e/postgres.sh status  exit 0 if it runs, 1 otherwise
#   e2e/postgres.sh env     print `export TOLLGATE_TEST_POSTGRES_URL=...` for eval
#   e2e/postgres.sh crash-restart
#                           stop it the way a crash would (`pg_ctl -m immediate`:
#                           no checkpoint, clients cut) and start it again on
#                           the same port; for fault tests
#
# Data lives in e2e/.state/postgres (git-ignored), or in $TOLLGATE_PG_STATE
# (a fault test's own server). The server listens on 127.0.0.1 only, on a free
# port, with its unix socket inside the state dir, and fsync off: the data is
# disposable, and no test crashes the kernel under it. Commits stay
# synchronous, so what PostgreSQL acknowledged survives a crash of the server.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
state=${TOLLGATE_PG_STATE:-$here/.state/postgres}
data=$state/data
sock=$state/sock
db=tollgate
db_user=tollgate
start_timeout=${TOLLGATE_PG_START_TIMEOUT:-60}

log() { echo "postgres.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  echo "usage: $(basename "$0") up|down|status|env|crash-restart" >&2
  exit 2
}

# Sets pg_bin to a directory holding initdb, pg_ctl and psql. Debian keeps
# them in /usr/lib/postgresql/N/bin, off PATH, so look there too.
find_pg_bin() {
  local d candidates=()
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    candidates+=("$(dirname "$(readlink -f "$(command -v pg_ctl)")")" "$(dirname "$(command -v pg_ctl)")")
  fi
  mapfile -t -O "${#candidates[@]}" candidates < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4,4 -n -r)
  for d in "${candidates[@]}"; do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && [ -x "$d/psql" ]; then
      pg_bin=$d
      return 0
    fi
  done
  return 1
}

install_pg() {
  [ "$(id -u)" -eq 0 ] || die "PostgreSQL (initdb, pg_ctl) is missing and installing it needs root"
  command -v apt-get >/dev/null || die "PostgreSQL (initdb, pg_ctl) is missing and apt-get is not available"
  log "PostgreSQL not found; installing it with apt-get"
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2 \
    || die "apt-get install postgresql failed"
}

# As root, postgres refuses to run: use the `postgres` user if there is one,
# else a dedicated system user.
pick_run_user() {
  run_user=
  [ "$(id -u)" -eq 0 ] || return 0
  if id -u postgres >/dev/null 2>&1; then
    run_user=postgres
  else
    if ! id -u tollgate-pg >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin tollgate-pg \
        || die "could not create the system user tollgate-pg"
    fi
    run_user=tollgate-pg
  fi
}

# as_pg CMD...: run CMD as the unprivileged user (or as ourselves when not root).
as_pg() {
  if [ -n "$run_user" ]; then
    runuser -u "$run_user" -- "$@"
  else
    "$@"
  fi
}

free_port() {
  local port tries=0
  while [ "$tries" -lt 200 ]; do
    tries=$((tries + 1))
    port=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  die "no free port found on 127.0.0.1"
}

is_running() {
  [ -f "$data/PG_VERSION" ] && [ -f "$state/bin" ] || return 1
  pg_bin=$(<"$state/bin")
  pick_run_user
  as_pg "$pg_bin/pg_ctl" status -D "$data" >/dev/null 2>&1
}

cmd_up() {
  if is_running; then
    log "already running on port $(<"$state/port")"
    return 0
  fi
  [ ! -d "$state" ] || { log "found stale state; cleaning it up first"; cmd_down; }
  find_pg_bin || { install_pg; find_pg_bin || die "PostgreSQL installed but initdb/pg_ctl not found"; }
  pick_run_user

  local t0=$SECONDS port password
  port=$(free_port)
  password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  mkdir -p "$state" "$sock"
  echo "$pg_bin" >"$state/bin"
  echo "$port" >"$state/port"
  (umask 077 && echo "$password" >"$state/password")
  if [ -n "$run_user" ]; then
    chown -R "$run_user" "$state"
    # The data dir must be reachable by that user through every parent.
    as_pg test -x "$state" || die "user $run_user cannot reach $state; check the permissions of its parents"
  fi

  as_pg "$pg_bin/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C >"$state/initdb.log" 2>&1 \
    || { tail -n 20 "$state/initdb.log" >&2; die "initdb failed (log: $state/initdb.log)"; }
  cat >>"$data/postgresql.conf" <<EOF

# tollgate e2e: loopback only, disposable data.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sock'
fsync = off
full_page_writes = off
EOF

  as_pg "$pg_bin/pg_ctl" start -D "$data" -l "$state/postgres.log" -w -t "$start_timeout" >/dev/null \
    || { tail -n 40 "$state/postgres.log" >&2; die "PostgreSQL did not start within ${start_timeout}s (log: $state/postgres.log)"; }

  as_pg "$pg_bin/psql" -v ON_ERROR_STOP=1 -q -h "$sock" -p "$port" -U postgres -d postgres \
    -c "CREATE ROLE $db_user LOGIN PASSWORD '$password'" \
    -c "CREATE DATABASE $db OWNER $db_user" >&2 \
    || die "creating the database failed"
  log "up in $((SECONDS - t0))s on 127.0.0.1:$port (data: $data)"
}

cmd_down() {
  if [ -f "$data/PG_VERSION" ] && [ -f "$state/bin" ]; then
    pg_bin=$(<"$state/bin")
    pick_run_user
    if as_pg "$pg_bin/pg_ctl" status -D "$data" >/dev/null 2>&1; then
      as_pg "$pg_bin/pg_ctl" stop -D "$data" -m fast -w -t 30 >/dev/null \
        || die "pg_ctl stop failed (log: $state/postgres.log)"
      log "stopped"
    fi
  fi
  rm -rf "$state"
}

cmd_crash_restart() {
  is_running || die "PostgreSQL is not running; start it with: $here/postgres.sh up"
  as_pg "$pg_bin/pg_ctl" stop -D "$data" -m immediate -w -t 30 >/dev/null \
    || die "pg_ctl stop -m immediate failed (log: $state/postgres.log)"
  as_pg "$pg_bin/pg_ctl" start -D "$data" -l "$state/postgres.log" -w -t "$start_timeout" >/dev/null \
    || { tail -n 40 "$state/postgres.log" >&2; die "PostgreSQL did not come back within ${start_timeout}s (log: $state/postgres.log)"; }
}

cmd_status() {
  if is_running; then
    echo "postgres: running on 127.0.0.1:$(<"$state/port")"
  else
    echo "postgres: not running"
    return 1
  fi
}

cmd_env() {
  is_running || die "PostgreSQL is not running; start it with: $here/postgres.sh up"
  printf 'export TOLLGATE_TEST_POSTGRES_URL=%q\n' \
    "postgres://$db_user:$(<"$state/password")@127.0.0.1:$(<"$state/port")/$db"
}

[ "$#" -eq 1 ] || usage
case "$1" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  crash-restart) cmd_crash_restart ;;
  *) usage ;;
esac
