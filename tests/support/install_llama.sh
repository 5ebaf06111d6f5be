#!/bin/sh
# Install the llama-cpp-python OpenAI-compatible server into its own
# virtualenv, so that its dependencies (fastapi, uvicorn, pydantic, ...) never
# touch the project's environment.  The model-routing tests start it as a
# separate process (tests/support/llama.py).
#
#   AICN_MODELS_VENV  venv path (default $HOME/.cache/aicn/llama-venv)
#   AICN_WHEELS       wheel cache (default $HOME/.cache/aicn/wheels)
#   AICN_PYTHON       interpreter to create the venv with (default python3)
#
# Building llama.cpp from the sdist takes about 5 minutes on 2 cores, so the
# built wheel is cached and reused.  It is built with GGML_NATIVE=OFF so that a
# wheel cached on one CPU does not die with SIGILL on another.
# Idempotent: a quick no-op when the venv already has the pinned versions.
set -eu

LLAMA_VERSION=0.3.36
GGUF_VERSION=0.19.0

venv=${AICN_MODELS_VENV:-$HOME/.cache/aicn/llama-venv}
wheels=${AICN_WHEELS:-$HOME/.cache/aicn/wheels}
python=${AICN_PYTHON:-python3}
stamp="$venv/.aicn-llama-$LLAMA_VERSION-gguf-$GGUF_VERSION"

if [ -f "$stamp" ] && "$venv/bin/python" -c 'import llama_cpp.server, gguf, numpy' 2>/dev/null; then
    echo "install_llama.sh: $venv up to date (llama-cpp-python $LLAMA_VERSION)"
    exit 0
fi

start=$(date +%s)
mkdir -p "$wheels"
if [ ! -x "$venv/bin/python" ]; then
    echo "install_llama.sh: creating venv $venv"
    "$python" -m venv "$venv"
fi
pip="$venv/bin/python -m pip"
$pip install --quiet --disable-pip-version-check --upgrade pip wheel

if ! ls "$wheels"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
    echo "install_llama.sh: building llama-cpp-python $LLAMA_VERSION wheel (several minutes)"
    b=$(date +%s)
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
        $pip wheel --disable-pip-version-check --no-deps \
        --no-binary llama-cpp-python -w "$wheels" "llama-cpp-python==$LLAMA_VERSION"
    echo "install_llama.sh: wheel built in $(( $(date +%s) - b )) s"
fi
wheel=$(ls "$wheels"/llama_cpp_python-$LLAMA_VERSION-*.whl | head -n 1)

$pip install --disable-pip-version-check --quiet \
    "${wheel}[server]" "gguf==$GGUF_VERSION" numpy
"$venv/bin/python" -c 'import llama_cpp.server, gguf, numpy'
touch "$stamp"
echo "install_llama.sh: done in $(( $(date +%s) - start )) s"
