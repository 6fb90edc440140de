#!/usr/bin/env bash
# Create the virtual environment and install raykd with what it needs, once.
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
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # timm needs torchvision, and a torchvision must match its torch exactly: PyPI's torchvision does not
  # import beside a CPU-only torch build, so the pair is pinned to builds that work together (on x86_64
  # a CUDA build, which also runs on CPUs; an unpinned torchvision would pull the newest torch instead).
  # RAYKD_TORCH / RAYKD_TORCHVISION override the pair; RAYKD_TORCH_INDEX adds a wheel index.
  case "$(uname -m)" in
    aarch64|arm64) pair=("torch==2.9.1" "torchvision==0.24.1") ;;
    *) pair=("torch==2.14.1" "torchvision==0.29.1") ;;
  esac
  echo "[setup] installing ${RAYKD_TORCH:-${pair[0]}} and ${RAYKD_TORCHVISION:-${pair[1]}}"
  "${PIP[@]}" "${RAYKD_TORCH:-${pair[0]}}" "${RAYKD_TORCHVISION:-${pair[1]}}" \
    ${RAYKD_TORCH_INDEX:+--extra-index-url "$RAYKD_TORCH_INDEX"} 2>&1 | grep -v "^WARNING: Location" || true
fi
echo "[setup] installing raykd and its dependencies"
"${PIP[@]}" -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import raykd, ray, torch, torchvision, timm, transformers, gymnasium, mujoco" 
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (IDX files); install it if we can.
if [[ ! -d /usr/share/datasets/fashion-mnist && -z "${RAYKD_FASHION_MNIST:-}" ]] && command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  echo "[setup] installing Debian's dataset-fashion-mnist"
  (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
    || echo "[setup] could not install dataset-fashion-mnist; fashion_mnist tests will be skipped"
fi
touch "$STAMP"
echo "[setup] ready: $VENV"
