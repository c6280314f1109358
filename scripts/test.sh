#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (extra arguments go to pytest).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
# The suite's training runs write checkpoints: up to about 5 GB at once under $TMPDIR (a passed test's folder is
# removed at once, see pyproject.toml). Say so before the run rather than fail half-way on a full disk.
tmp="${TMPDIR:-/tmp}"
free_gb="$(df -Pk "$tmp" 2>/dev/null | awk 'NR == 2 { printf "%d", $4 / 1048576 }')" || free_gb=""
if [ -n "$free_gb" ] && [ "$free_gb" -lt 6 ]; then
    echo "[test] warning: only ${free_gb} GB free in $tmp; the suite needs about 5 GB there (set TMPDIR to a roomier folder)" >&2
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
