#!/usr/bin/env bash
# Build (idempotently) what the CARE integration and browser tests need from a real ComfyUI:
#   1. a ComfyUI tree at $COMFYUI_PATH (exported from a git snapshot when --from-git is given and the tree is absent),
#   2. its own venv at $COMFYUI_PATH/.venv (torch 2.14.1 + torchvision 0.29.1, then ComfyUI's requirements),
#   3. a random-weight SD1.5 checkpoint made with ComfyUI's own classes, in a cache outside git
#      ($CARE_MODEL_CACHE, default ~/.cache/care-erasure/models/checkpoints/random_sd15.safetensors).
# Nothing here is committed to the project: ComfyUI, its venv and the weights all live outside the repo.
#
# usage: tests/integration/setup_comfyui.sh [COMFYUI_PATH] [--from-git GIT_DIR [--rev REV]] [--all-families]
#   --all-families: also the random SDXL checkpoint and SD3 model + CLIP-L/G + tiny T5 in $COMFYUI_PATH/models
#                   (used by tests/integration/test_adapters_comfyui.py; its SDXL/SD3/FLUX parts skip without them)
#   env: COMFYUI_PATH (default /work/comfyui), CARE_MODEL_CACHE, MAKE_RANDOM_MODEL (path of make_random_model.py)
set -euo pipefail

COMFY="${COMFYUI_PATH:-/work/comfyui}"
FROM_GIT=""
ALL_FAMILIES=0
REV="63722199"   # "ComfyUI version 0.3.64"
while [ $# -gt 0 ]; do
  case "$1" in
    --from-git) FROM_GIT="$2"; shift 2 ;;
    --rev) REV="$2"; shift 2 ;;
    --all-families) ALL_FAMILIES=1; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) COMFY="$1"; shift ;;
  esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${CARE_MODEL_CACHE:-$HOME/.cache/care-erasure/models}"
MAKER="${MAKE_RANDOM_MODEL:-}"
if [ -z "$MAKER" ]; then
  for c in "$REPO/../shared/testing/make_random_model.py" /work/shared/testing/make_random_model.py; do
    [ -f "$c" ] && MAKER="$c" && break
  done
fi

log() { echo "[setup_comfyui] $*"; }

# 1. the tree
if [ ! -f "$COMFY/main.py" ]; then
  if [ -z "$FROM_GIT" ]; then
    log "no ComfyUI tree at $COMFY and no --from-git given"; exit 2
  fi
  log "exporting ComfyUI $REV from $FROM_GIT to $COMFY"
  mkdir -p "$COMFY"
  # a snapshot may lack some large blobs (e.g. a tokenizer.json that only non-SD models use): leave those out
  missing=()
  while read -r sha kind; do
    [ "$kind" = missing ] && missing+=(":(exclude)$(git --git-dir="$FROM_GIT" ls-tree -r "$REV" | awk -v s="$sha" '$3==s{print $4}')")
  done < <(git --git-dir="$FROM_GIT" ls-tree -r "$REV" | awk '{print $3}' | git --git-dir="$FROM_GIT" cat-file --batch-check='%(objectname) %(objecttype)' 2>/dev/null | sed 's/ missing$/ missing/')
  [ ${#missing[@]} -gt 0 ] && log "leaving out blobs absent from the snapshot: ${missing[*]}"
  git --git-dir="$FROM_GIT" archive "$REV" -- . "${missing[@]}" | tar -x -C "$COMFY"
fi
grep -q '__version__' "$COMFY/comfyui_version.py" && log "ComfyUI $(grep __version__ "$COMFY/comfyui_version.py" | cut -d'"' -f2) at $COMFY"

# 2. the venv
PY="$COMFY/.venv/bin/python"
if [ ! -x "$PY" ]; then
  log "creating venv $COMFY/.venv"
  python3 -m venv "$COMFY/.venv"
fi
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "installing torch==2.14.1 torchvision==0.29.1 (from the local wheel store when pip has one)"
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
STAMP="$COMFY/.venv/.care_requirements_done"
if [ ! -f "$STAMP" ] || [ "$COMFY/requirements.txt" -nt "$STAMP" ]; then
  log "installing ComfyUI requirements (torch/torchvision/torchaudio pinned above or left out)"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$COMFY/.venv/care-req.txt"
  "$PY" -m pip install -q -r "$COMFY/.venv/care-req.txt" requests "torch==2.14.1" "torchvision==0.29.1"
  touch "$STAMP"
fi

# 3. the random SD1.5 checkpoint
CKPT="$CACHE/checkpoints/random_sd15.safetensors"
if [ ! -s "$CKPT" ]; then
  if [ -z "$MAKER" ]; then log "make_random_model.py not found (set MAKE_RANDOM_MODEL)"; exit 2; fi
  mkdir -p "$CACHE/checkpoints"
  log "writing random SD1.5 checkpoint to $CKPT"
  COMFYUI_PATH="$COMFY" "$PY" "$MAKER" --family sd15 --out "$CKPT.tmp.safetensors" --no-verify
  mv "$CKPT.tmp.safetensors" "$CKPT"
fi
# 4. optional: the other families' random models (written by make_random_model.py into $COMFY/models)
if [ "$ALL_FAMILIES" = 1 ]; then
  if [ ! -s "$COMFY/models/diffusion_models/random_sd3_d2.safetensors" ] || [ ! -s "$COMFY/models/text_encoders/random_t5xxl_tiny.safetensors" ]; then
    log "writing random SD3 model, CLIP-L/G and tiny T5"
    COMFYUI_PATH="$COMFY" "$PY" "$MAKER" --family sd3 --tiny-t5 --no-verify
  fi
  if [ ! -s "$COMFY/models/checkpoints/random_sdxl_tiny.safetensors" ]; then
    log "writing random SDXL (tiny) checkpoint"
    COMFYUI_PATH="$COMFY" "$PY" "$MAKER" --family sdxl --no-verify
  fi
fi
log "ready: COMFYUI_PATH=$COMFY COMFYUI_PYTHON=$PY CARE_MODEL_CACHE=$CACHE"
