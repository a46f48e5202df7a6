#!/usr/bin/env bash
# The reference run on a GPU machine: slo_specs/qwen.yaml (vLLM and transformers serve, both
# datasets, concurrency 1 and 10, CPU offload), then the agreement check against vLLM's own
# benchmark client on the same kind of server. Results go to $OUT (default ./gpu-results).
#   bash bench/gpu_reference.sh [slo] [gpu-tests] [agreement]     (default: all three)
#   SLO_SELECT='offload' selects scenarios of the spec run with -k.
#
# Needs vLLM, transformers (+ accelerate) and nvidia-ml-py importable, and a model directory
# (QWEN_MODEL) or the builder the reference run used: python mk_qwen05.py DIR --weights.
# Run from the project root; the package need not be installed (PYTHONPATH=. is set here).
set -euo pipefail
OUT=${OUT:-gpu-results}
MODEL=${QWEN_MODEL:?set QWEN_MODEL to a model directory}
DATA=${LLMSLO_DATA:-/tmp/llmslo-data}
mkdir -p "$OUT" "$DATA"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# the synthetic tokenizer splits the fixture documents ~3x finer than Qwen's: cut to ~7.4k tokens
cp fixtures/open_qa.jsonl "$DATA/open_qa.jsonl"
python3 bench/fit_longalpaca.py fixtures/longalpaca.json "$DATA/longalpaca.json" \
  --tokenizer "$MODEL" --tokens 7400 > /dev/null
export QWEN_MODEL=$MODEL LLMSLO_DATA=$DATA
steps=" ${*:-slo gpu-tests agreement} "  # any of: slo gpu-tests agreement
if [[ $steps == *" slo "* ]]; then
  # -W default: the suite's warnings-as-errors setting is for our tests, not for a spec run
  python3 -m pytest -p pytest_llmslo.plugin -p no:cacheprovider -W default \
    --slo slo_specs/qwen.yaml --slo-report "$OUT/report.md" --junitxml "$OUT/junit.xml" \
    ${SLO_SELECT:+-k "$SLO_SELECT"} || true
fi
if [[ $steps == *" gpu-tests "* ]]; then
  python3 -m pytest -p pytest_llmslo.plugin -p no:cacheprovider -W default tests/gpu -v -rs \
    2>&1 | tee "$OUT/gpu-tests.log" || true
fi
if [[ $steps == *" agreement "* ]]; then
  python3 bench/vllm_agreement.py "$MODEL" --out "$OUT/agreement.md" --arg max_model_len=16384
fi
