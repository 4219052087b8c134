#!/usr/bin/env bash
# The mixed task (WikiText-2 pages, CPython modules, MMLU questions) on real weights, one CUDA GPU,
# in stages that share a runs folder (each fits a 10-minute job):
#   bench/real_mixed.sh importance PRESET RUNS  # global neuron order on WikiText-2 validation
#   bench/real_mixed.sh static     PRESET RUNS  # eval without an agent: static arms + per-input oracle
#   bench/real_mixed.sh train      PRESET RUNS  # budget policy on the mixed training items
#   bench/real_mixed.sh eval       PRESET RUNS  # the sweep with the policy's arms too
#   bench/real_mixed.sh table      PRESET RUNS  # short table of the newest eval.json
# PRESET: configs/smollm2-135m-cuda.yml or configs/qwen2.5-coder-1.5b.yml; RUNS: a folder.
# LLM=<gguf or model folder> overrides model.llm (e.g. a GGUF joined by hand); IMPORTANCE=<file>
# overrides env.importance_file (both presets' files ship in grouping_statistics/: `importance`
# only for another model). Further arguments go to main.py last, so they override the stage's
# settings below (e.g. --set train.checkpoint_every=1000). MMLU: the Hendrycks CSVs in
# ../shared/data/mmlu (or --set data.mmlu_path=...).
# Items: all 62 WikiText-2 test pages, all 48 test modules, LIMIT (default 300) MMLU test questions
# (evenly spaced over subjects); training: every validation window, every train-module window and
# every MMLU dev + val question (256-token windows).
# Levers: LEVERS='[budget,blend,stats]' trains (and evaluates) with context neurons and them.
# FIT=N: `static` and `eval` also fit per-input budgets on N training items of each kind
# (`eval.fit_items`; every unit of them scored at the oracle's budgets of each target; arms
# fitted_input and fitted_within_kind). FIT=60 with context neurons at 0.2-0.5: ~7 minutes for
# SmolLM2-135M on an H200, 4-6 minutes per target for Qwen2.5-Coder-1.5B.
# Time: `static` and `eval` score every item 7 times per target and neuron choice (5 oracle
# budgets + 2 static arms): about 3 s each for SmolLM2-135M on an H100-class GPU (all 5 targets,
# both neuron choices: ~4 minutes); a 1.5B model is ~10x slower: run one target per job
# (TARGETS=[0.3] bench/real_mixed.sh static ...).
set -euo pipefail
stage=$1 preset=$2 runs=$3
shift 3
args=(--config "$preset" --set model.device=cuda --set "train.runs_dir=$runs" --set data.dataset=mixed
      --set env.max_length=256 --set env.batch_size=64 --set data.max_samples=null
      --set eval.limit=null --set "eval.targets=${TARGETS:-[0.1,0.2,0.3,0.4,0.5]}")
[[ -n ${LLM:-} ]] && args+=(--set "model.llm=$LLM")
[[ -n ${IMPORTANCE:-} ]] && args+=(--set "env.importance_file=$IMPORTANCE")
[[ -n ${LEVERS:-} ]] && args+=(--set env.neurons=context --set "env.levers=$LEVERS")
[[ -n ${FIT:-} ]] && args+=(--set "eval.fit_items=$FIT")  # static / eval: the fitted_input arm
limit=(--limit "${LIMIT:-300}")  # per kind: WikiText has 62 pages, code 48 files
case $stage in
  importance)  # into RUNS/stats; pass the file as IMPORTANCE=... to the other stages
    exec python3 main.py importance "${args[@]}" --set data.dataset=wikitext \
      --set "importance.output_dir=$runs/stats" "$@" ;;
  static)
    exec python3 main.py eval "${args[@]}" "${limit[@]}" --agent none --neurons "${NEURONS:-both}" "$@" ;;
  train)
    exec python3 main.py train "${args[@]}" --set train.total_steps="${STEPS:-60000}" \
      --set train.n_envs=32 --set sac.gradient_steps=8 --set train.checkpoint_every=5000 \
      --set sac.learning_starts=1000 --set sac.buffer_size=100000 --set sac.batch_size=256 \
      --set sac.net_arch=[256,256] --set env.target_step=0.1 --set train.eval_after=false \
      ${RESUME:+--resume latest} "$@" ;;
  eval)
    exec python3 main.py eval "${args[@]}" "${limit[@]}" --neurons "${NEURONS:-both}" \
      ${AGENT:+--agent "$AGENT"} "$@" ;;
  table)
    exec python3 bench/mixed_table.py "$(ls -t "$runs"/eval_*/eval.json | head -n 1)" ;;
  *) echo "usage: $0 importance|static|train|eval|table PRESET RUNS" >&2; exit 2 ;;
esac
