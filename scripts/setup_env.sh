#!/usr/bin/env bash
# Create .venv/ with the pinned stack, Detectron2 and this project (editable).
# Idempotent: each step is skipped when its stamp is newer than its inputs.
#
# Detectron2: if `import detectron2` already works in the venv (e.g. an official build
# installed by the user, see README), it is left alone. Otherwise the registry copy
# sal-detectron2==0.7.2 is unpacked into .venv/detectron2-py310/ and exposed with a .pth
# file; its wheel is tagged cp310, but its Python code runs on 3.11 (the compiled _C for
# torch 2.3 is removed; Detectron2 then falls back to torchvision ops).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
PIP="$VENV/bin/python -m pip"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup_env] creating $VENV"
  "$PY" -m venv "$VENV"
fi

if [ ! -f "$VENV/.deps-stamp" ] || [ requirements.txt -nt "$VENV/.deps-stamp" ]; then
  echo "[setup_env] installing requirements.txt (first time: a few minutes, ~6 GB)"
  $PIP install -q --upgrade "pip>=23"
  $PIP install -q -r requirements.txt
  touch "$VENV/.deps-stamp"
fi

D2_DIR="$VENV/detectron2-py310"
SITE=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$VENV/.d2-stamp" ] || [ requirements-detectron2.txt -nt "$VENV/.d2-stamp" ]; then
  if [ ! -d "$D2_DIR" ] && $VENV/bin/python -c "import detectron2" 2>/dev/null; then
    echo "[setup_env] using the Detectron2 already installed in $VENV"
  else
    echo "[setup_env] installing Detectron2 (sal-detectron2, hash-pinned) into $D2_DIR"
    rm -rf "$D2_DIR"
    $PIP install -q --no-deps --require-hashes --target "$D2_DIR" --python-version 3.10 \
      --only-binary=:all: --implementation cp -r requirements-detectron2.txt
    rm -f "$D2_DIR"/detectron2/_C*.so          # built for py3.10 / torch 2.3: cannot load
    rm -rf "$D2_DIR"/sal_detectron2-*.dist-info  # its cp310 tag and numpy<2 pin upset pip check
    rm -rf "$D2_DIR"/tools                      # a top-level `tools` package would shadow ours
    echo "$(cd "$D2_DIR" && pwd)" > "$SITE/detectron2-py310.pth"
  fi
  touch "$VENV/.d2-stamp"
fi

if [ ! -f "$VENV/.project-stamp" ] || [ setup.py -nt "$VENV/.project-stamp" ]; then
  echo "[setup_env] installing aw_detection (editable)"
  $PIP install -q --no-deps --no-build-isolation -e .
  touch "$VENV/.project-stamp"
fi

$VENV/bin/python -m pip check >/dev/null || { $VENV/bin/python -m pip check; exit 1; }
