#!/usr/bin/env bash
# Create the virtual environment and install raykd with what it needs, once.
# torch goes first as the CPU build (a plain `pip install torch` would pull a multi-GB CUDA build);
# RAYKD_TORCH overrides the torch requirement (e.g. RAYKD_TORCH="torch==2.13.0" from PyPI is a CUDA build on Linux).
set -euo pipefail
PY="${1:-python3}"
VENV="${2:-.venv}"
STAMP="$VENV/.raykd-installed"
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml ]]; then
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch (CPU build)"
  # RAYKD_TORCH_INDEX: e.g. PyTorch's CPU wheel index on machines where PyPI's torch is a CUDA build
  "${PIP[@]}" "${RAYKD_TORCH:-torch==2.13.0}" ${RAYKD_TORCH_INDEX:+--extra-index-url "$RAYKD_TORCH_INDEX"} 2>&1 | grep -v "^WARNING: Location" || true
fi
echo "[setup] installing raykd and its dependencies"
"${PIP[@]}" -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import raykd, ray, torch, transformers, gymnasium, mujoco" 
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (IDX files); install it if we can.
if [[ ! -d /usr/share/datasets/fashion-mnist && -z "${RAYKD_FASHION_MNIST:-}" ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "[setup] installing Debian's dataset-fashion-mnist"
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[setup] could not install dataset-fashion-mnist; fashion_mnist tests will be skipped"
fi
touch "$STAMP"
echo "[setup] ready: $VENV"
