#!/usr/bin/env bash
# Create (or verify) the project's Python environment: pinned torch, timm, OpenMMLab stack with a compiled mmcv.
#
# Usage: bash scripts/setup_env.sh            # creates ./.venv
#        VENV=/path/to/env bash scripts/setup_env.sh
#        FORCE_CUDA=1 bash scripts/setup_env.sh  # build mmcv's CUDA ops too (needs nvcc)
#
# mmcv 2.1.0 is only published as source on PyPI for recent torch versions, and its setup.py hard-codes
# -std=c++17 while torch >= 2.6 headers need C++20. We build it once with the right standard and keep the wheel in
# ${BGMASK_CACHE:-~/.cache/bgmask}/wheels, so later clones on the same machine install it in seconds.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO_ROOT/.venv}"
PYTHON="${PYTHON:-python3.11}"
CACHE_DIR="${BGMASK_CACHE:-$HOME/.cache/bgmask}"
FORCE_CUDA="${FORCE_CUDA:-0}"

TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MMCV_VERSION=2.1.0
# Everything except torch and mmcv, pinned where the OpenMMLab stack is sensitive.
PY_REQUIREMENTS=(
  "timm>=1.0.12,<2"
  "mmengine==0.10.7"
  "mmsegmentation==1.2.2"
  "mmdet==3.3.0"
  "numpy>=1.26,<2"
  "pillow>=10,<12"
  "matplotlib>=3.8"
  "tqdm>=4.66"
  "scikit-learn>=1.3"
  "wandb>=0.17"
  "pyyaml>=6"
  "ftfy" "regex"
  "pytest>=8" "pytest-timeout" "hypothesis>=6"
  "ruff>=0.5"
  "import-linter>=2.1"
)

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

# A fingerprint of what this script installs: when it matches the stamp in the venv and the imports work, the
# environment is complete and there is nothing to do.
fingerprint() {
  { echo "$TORCH_VERSION $TORCHVISION_VERSION $MMCV_VERSION FORCE_CUDA=$FORCE_CUDA"; printf '%s\n' "${PY_REQUIREMENTS[@]}";
    cat "$REPO_ROOT/pyproject.toml"; } | sha256sum | cut -c1-16
}
STAMP="$VENV/.bgmask-setup-$(fingerprint)"

check_imports() {
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib
import torch, torchvision, timm, mmengine, mmcv, mmseg, mmdet  # noqa: F401
from mmcv.ops import nms  # noqa: F401  (fails unless mmcv was built with its compiled ops)
import bgmask, cub_seg  # noqa: F401
EOF
}

if [[ -f "$STAMP" ]] && check_imports; then
  echo "Environment at $VENV is complete (torch $TORCH_VERSION, mmcv $MMCV_VERSION with ops); nothing to do."
  exit 0
fi

step "Checking prerequisites"
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found. Install Python 3.11 or set PYTHON=/path/to/python3.11."
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null \
  || die "$PYTHON is not Python 3.11 ($("$PYTHON" --version 2>&1)). Set PYTHON=/path/to/python3.11."
"$PYTHON" -c 'import sysconfig, os; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
  || die "Python headers (Python.h) are missing; install python3.11-dev (needed to compile mmcv)."

if [[ ! -x "$VENV/bin/python" ]]; then
  step "Creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a venv at $VENV"
else
  step "Reusing virtual environment at $VENV"
fi
# pip configurations with a --find-links/--extra-index-url that has no entry for a package warn once per package;
# those lines are noise, everything else pip prints is kept.
pip_quiet() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}
PIP=(pip_quiet)
# setuptools < 81 still ships pkg_resources, which mmcv's setup.py imports; torch 2.14 needs >= 77.0.3.
"${PIP[@]}" install --quiet --upgrade "pip>=24" "setuptools>=77.0.3,<81" wheel ninja

step "Installing torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION"
"${PIP[@]}" install --quiet "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

TORCH_TAG="torch$TORCH_VERSION-$([[ "$FORCE_CUDA" == 1 ]] && echo cuda || echo cpu)"
WHEEL_DIR="$CACHE_DIR/wheels/$TORCH_TAG"
mkdir -p "$WHEEL_DIR"
if "$VENV/bin/python" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  step "mmcv $MMCV_VERSION with compiled ops already installed"
else
  MMCV_WHEEL="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
  if [[ -z "$MMCV_WHEEL" ]]; then
    step "Building mmcv $MMCV_VERSION with compiled ops from source (one-off, ~8 min on 2 cores; cached in $WHEEL_DIR)"
    command -v g++ >/dev/null 2>&1 || die "no C++ compiler (g++) found; install build-essential / gcc-c++ to build mmcv."
    if [[ "$FORCE_CUDA" == 1 ]]; then
      command -v nvcc >/dev/null 2>&1 || die "FORCE_CUDA=1 but nvcc is not on PATH; load your CUDA toolkit module."
    fi
    BUILD_DIR="$(mktemp -d)"
    trap 'rm -rf "$BUILD_DIR"' EXIT
    "${PIP[@]}" download --quiet --no-deps --no-build-isolation --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD_DIR" \
      || die "could not download the mmcv $MMCV_VERSION source from PyPI"
    tar -xzf "$BUILD_DIR"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD_DIR"
    SRC="$BUILD_DIR/mmcv-$MMCV_VERSION"
    # torch >= 2.6 headers use C++20 features; mmcv 2.1.0 asks the compiler for C++17.
    CXX_STD="$("$VENV/bin/python" -c 'import torch; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 6) else "c++17")')"
    sed -i "s/-std=c++17/-std=$CXX_STD/g" "$SRC/setup.py"
    grep -q -- "-std=$CXX_STD" "$SRC/setup.py" || die "could not set the C++ standard in mmcv's setup.py"
    echo "    compiling with -std=$CXX_STD, MAX_JOBS=${MAX_JOBS:-$(nproc)}, FORCE_CUDA=$FORCE_CUDA"
    (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      pip_quiet wheel --no-build-isolation --no-deps -w "$BUILD_DIR/dist" . > "$BUILD_DIR/build.log" 2>&1) \
      || { tail -n 40 "$BUILD_DIR/build.log" >&2; die "mmcv build failed (log above)."; }
    BUILT="$(ls "$BUILD_DIR"/dist/mmcv-*.whl)"
    # Copy then rename so a concurrent or interrupted run never sees a partial wheel.
    cp "$BUILT" "$WHEEL_DIR/.partial.whl" && mv "$WHEEL_DIR/.partial.whl" "$WHEEL_DIR/$(basename "$BUILT")"
    MMCV_WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
  else
    step "Using cached mmcv wheel $MMCV_WHEEL"
  fi
  "${PIP[@]}" install --quiet --no-deps "$MMCV_WHEEL"
  # mmcv's own runtime requirements (not pulled in because of --no-deps above).
  "${PIP[@]}" install --quiet addict packaging pyyaml "opencv-python-headless<4.11" yapf
fi

step "Installing timm, OpenMMLab (mmengine, mmsegmentation, mmdet) and tools"
"${PIP[@]}" install --quiet "${PY_REQUIREMENTS[@]}"

step "Installing this repository in editable mode"
"${PIP[@]}" install --quiet --no-deps --no-build-isolation -e "$REPO_ROOT"

step "Verifying imports"
check_imports || { "$VENV/bin/python" -c 'import torch, timm, mmengine, mmcv, mmcv.ops, mmseg, mmdet, bgmask, cub_seg'; \
  die "the environment does not import cleanly (traceback above)"; }
rm -f "$VENV"/.bgmask-setup-*
touch "$STAMP"
"$VENV/bin/python" -c 'import torch, mmcv, mmseg, timm; print(f"torch {torch.__version__} (cuda available: {torch.cuda.is_available()}), mmcv {mmcv.__version__}, mmseg {mmseg.__version__}, timm {timm.__version__}")'
echo "Environment ready at $VENV. Activate with: source $VENV/bin/activate"
