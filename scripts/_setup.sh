# Sourced by demo.sh and test.sh: make sure .venv exists and holds this checkout, installed with its test extras.
# Re-installs only when pyproject.toml changed since the last install (a stamp in .venv records its hash).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.tl-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing tl and its dependencies into .venv (a few minutes the first time)"
    # The distribution was called "tl" before it became tl-finetune; two editable installs of one package would clash.
    if [ -n "$(.venv/bin/python -m pip list --disable-pip-version-check --format freeze 2>/dev/null | grep -x 'tl==.*')" ]; then
        .venv/bin/python -m pip uninstall --quiet --yes tl
    fi
    # pip prints a warning per missing local index folder on some machines; keep the log short.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import tl, torch, torchvision, accelerate" 
    echo "$want" > "$stamp"
fi
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export PATH="$PWD/.venv/bin:$PATH"
