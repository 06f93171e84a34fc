#!/usr/bin/env bash
# A throwaway PostgreSQL server for MLflow, for CI and for running the stack by hand.
#
#   scripts/postgres.sh start DIR [PORT]   init (first time) and start a cluster in DIR,
#                                          bound to 127.0.0.1:PORT (default 55432); creates
#                                          the database and user; prints the SQLAlchemy URI
#   scripts/postgres.sh uri DIR            print the URI of the cluster in DIR again
#   scripts/postgres.sh stop DIR           stop it (the files stay; rm -rf DIR to drop them)
#
# The URI names its driver (postgresql+psycopg://, psycopg 3): SQLAlchemy 2.1 makes
# psycopg 3 the default for plain postgresql:// and 2.0 made it psycopg2, so naming it
# keeps the URI working under both. Install it with: pip install "psycopg[binary]".
#
# When the PostgreSQL server binaries are missing, `start` installs Debian's
# `postgresql` package (root + apt-get, non-interactive). PostgreSQL refuses to run as
# root, so as root the server runs as the OS user $PG_OS_USER (default `postgres`,
# created when missing) through runuser; as any other user it runs as that user.
#
# Exit status: 0 ok; 1 usage or other error; 3 PostgreSQL is not installed and cannot be
# installed here; 4 the server did not start (its log is printed).
#
# Environment: CLSWEEP_INSTALL=0 (never install: exit 3 instead), PG_DB, PG_USER,
# PG_PASSWORD (default clsweep each; letters, digits, _ and
# - only, so they go into the URI as they are), PG_OS_USER (default postgres),
# PG_BINDIR (folder with initdb/pg_ctl/psql, found automatically otherwise).
set -euo pipefail

PG_DB=${PG_DB:-clsweep}
PG_USER=${PG_USER:-clsweep}
PG_PASSWORD=${PG_PASSWORD:-clsweep}
PG_OS_USER=${PG_OS_USER:-postgres}
DEFAULT_PORT=55432
SCRIPT=$(readlink -f "$0")

say() { echo "postgres.sh: $*" >&2; }
die() { local status=$1; shift; say "$*"; exit "$status"; }

usage() {
    sed -n '4,9p' "$SCRIPT" | sed 's/^# \{0,1\}//' >&2
    exit 1
}

is_root() { [ "$(id -u)" = 0 ]; }

# Run a command as the OS user that owns the cluster.
as_owner() {
    if is_root; then runuser -u "$PG_OS_USER" -- "$@"; else "$@"; fi
}

# Folder holding initdb, pg_ctl and psql: $PG_BINDIR, else the one of an initdb on PATH
# (symlinks resolved), else the newest Debian /usr/lib/postgresql/<version>/bin.
find_bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return 0
    fi
    local initdb
    if initdb=$(command -v initdb 2>/dev/null); then
        dirname "$(readlink -f "$initdb")"
        return 0
    fi
    local dir
    for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
        [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && echo "$dir" && return 0
    done
    return 1
}

install_postgres() {
    [ "${CLSWEEP_INSTALL:-1}" != 0 ] || die 3 "PostgreSQL is not installed and CLSWEEP_INSTALL=0" \
        "forbids installing it (apt-get install postgresql)"
    is_root || die 3 "PostgreSQL is not installed and installing it needs root" \
        "(apt-get install postgresql); run this as root or install it first"
    command -v apt-get >/dev/null || die 3 "PostgreSQL is not installed and there is no" \
        "apt-get to install it with; install PostgreSQL (initdb, pg_ctl, psql) first"
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; } >&2 ||
        die 3 "apt-get install postgresql failed"
}

ensure_os_user() {
    is_root || return 0
    getent passwd "$PG_OS_USER" >/dev/null && return 0
    say "creating OS user $PG_OS_USER"
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin "$PG_OS_USER"
}

cmd_start() {
    local dir=$1 port=${2:-$DEFAULT_PORT}
    if ! [[ $port =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
        die 1 "PORT must be a number from 1 to 65535, got '$port'"
    fi
    local name
    for name in PG_DB PG_USER PG_PASSWORD; do
        [[ ${!name} =~ ^[A-Za-z0-9_-]+$ ]] || die 1 "$name may hold only letters, digits, _ and -"
    done

    local bindir
    bindir=$(find_bindir) || { install_postgres; bindir=$(find_bindir) ||
        die 3 "postgresql installed but no initdb/pg_ctl found under /usr/lib/postgresql"; }
    local tool
    for tool in initdb pg_ctl psql; do
        [ -x "$bindir/$tool" ] || die 1 "no $tool in $bindir (set PG_BINDIR to the folder" \
            "holding initdb, pg_ctl and psql)"
    done
    if is_root && ! command -v runuser >/dev/null; then
        die 1 "runuser (util-linux) is needed to run PostgreSQL as $PG_OS_USER"
    fi
    ensure_os_user

    # DIR stays readable (the uri file); the data and the socket live in private folders.
    mkdir -p "$dir"
    if is_root; then
        chown "$PG_OS_USER:" "$dir"
        chmod 0755 "$dir"
        as_owner test -w "$dir" -a -x "$dir" || die 1 "OS user $PG_OS_USER cannot reach $dir;" \
            "pick a folder whose parents it may enter (for example one under /tmp)"
    fi
    as_owner mkdir -p -m 0700 "$dir/socket"

    local data=$dir/data
    if [ ! -s "$data/PG_VERSION" ]; then
        say "initialising a cluster in $data"
        as_owner "$bindir/initdb" --pgdata="$data" --username=postgres --encoding=UTF8 \
            --no-locale --no-sync --auth-local=trust --auth-host=scram-sha-256 >&2
        # A throwaway server: durability settings off, which makes CI noticeably faster.
        as_owner tee -a "$data/postgresql.conf" >/dev/null <<EOF

# --- added by scripts/postgres.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir/socket'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
    fi

    if as_owner "$bindir/pg_ctl" status --pgdata="$data" >/dev/null 2>&1; then
        say "already running in $dir"
        cmd_uri "$dir"
        return 0
    fi
    say "starting on 127.0.0.1:$port"
    if ! as_owner "$bindir/pg_ctl" start --pgdata="$data" --log="$dir/postgres.log" \
            --wait --timeout=60 --options="-p $port" >&2; then
        tail -n 30 "$dir/postgres.log" >&2 || true
        die 4 "the server did not start (log: $dir/postgres.log)"
    fi

    as_owner "$bindir/psql" --no-psqlrc --quiet --host="$dir/socket" --port="$port" \
        --username=postgres --dbname=postgres --set=ON_ERROR_STOP=1 \
        --set=db="$PG_DB" --set=user="$PG_USER" --set=password="$PG_PASSWORD" >/dev/null <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'user', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'user') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL

    local uri="postgresql+psycopg://$PG_USER:$PG_PASSWORD@127.0.0.1:$port/$PG_DB"
    echo "$uri" >"$dir/uri"
    echo "$uri"
}

cmd_uri() {
    [ -s "$1/uri" ] || die 1 "no cluster was started in $1"
    cat "$1/uri"
}

cmd_stop() {
    local data=$1/data
    [ -s "$data/PG_VERSION" ] || { say "no cluster in $1, nothing to stop"; return 0; }
    local bindir
    bindir=$(find_bindir) || die 1 "cannot find pg_ctl"
    if as_owner "$bindir/pg_ctl" status --pgdata="$data" >/dev/null 2>&1; then
        as_owner "$bindir/pg_ctl" stop --pgdata="$data" --mode=fast --wait >&2
    else
        say "not running"
    fi
}

# runuser keeps the working directory, which the server's OS user may not be allowed
# to enter (for example /root); work from / with absolute paths.
[ $# -ge 2 ] || usage
command=$1 dir=$2
shift 2
case $dir in /*) ;; *) dir=$PWD/$dir ;; esac
cd /
case $command in
    start) [ $# -le 1 ] || usage; cmd_start "$dir" "$@" ;;
    uri) [ $# -eq 0 ] || usage; cmd_uri "$dir" ;;
    stop) [ $# -eq 0 ] || usage; cmd_stop "$dir" ;;
    *) usage ;;
esac
