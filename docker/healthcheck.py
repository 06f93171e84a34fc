"""Container health check: exit 0 when URL answers HTTP 200 (and its body holds TEXT).

    python docker/healthcheck.py URL [TEXT]

docker/compose.yaml runs it for the MLflow server (/health), the Ray head
(/api/gcs_healthz on the dashboard) and the Ray workers (/api/local_raylet_healthz on
the node's dashboard agent). Standard library only: the image needs no curl or wget.
"""

import sys
import urllib.request

# Health checks talk to the container itself: never through an HTTP proxy from the env.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    url, expected = argv[1], (argv[2] if len(argv) == 3 else None)
    try:
        with _OPENER.open(url, timeout=5) as response:
            body = response.read(4096).decode("utf-8", "replace")
    except OSError as error:  # refused, timed out, or an HTTP error status
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    if expected is not None and expected not in body:
        print(f"{url}: answered {body[:200]!r}, which lacks {expected!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
