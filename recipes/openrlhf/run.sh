#!/usr/bin/env bash
# GRPO (group-normalised advantages) + LoRA with OpenRLHF, rewarded by afterburner serve's
# POST /get_reward (OpenRLHF's remote reward protocol).
#
# Flags checked against OpenRLHF v0.11.0 (OpenRLHF/OpenRLHF, commit 3c3be6234e0c):
# openrlhf/cli/train_ppo_ray.py (the dotted flags; `--remote_rm_url` is now
# `--reward.remote_url`), openrlhf/utils/agent.py (SingleTurnAgentExecutor posts
# {"query", "prompts", "labels"} per sample and reads "rewards", "scores", "extra_logs"),
# openrlhf/datasets/prompts_dataset.py (the label is the row's --data.label_key field, sent
# as is), examples/scripts/train_reinforce_baseline_hybrid_engine.sh.
#
#   bash recipes/openrlhf/run.sh [more train_ppo_ray flags...]
#
# Environment (defaults in brackets): MODEL_PATH [Qwen/Qwen2.5-Coder-3B-Instruct], DATA
# [$HOME/data/afterburner-grpo-openrlhf], NGPUS [8], SAVE_PATH [checkpoints/openrlhf-grpo],
# plus recipes/common.sh's AFTERBURNER, DATASET, AFTERBURNER_URLS. A Ray cluster must be up
# (`ray start --head`).
#
# Only the first URL of AFTERBURNER_URLS is given to OpenRLHF: v0.11.0 posts each sample alone
# and shards that one-sample request over its URL list, so every URL but the first only ever
# gets empty lists. Scale one server (--workers), or put a load balancer in front of several.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Coder-3B-Instruct}
DATA=${DATA:-$HOME/data/afterburner-grpo-openrlhf}
NGPUS=${NGPUS:-8}
SAVE_PATH=${SAVE_PATH:-checkpoints/openrlhf-grpo}
REWARD_URL="${AFTERBURNER_URLS%%,*}/get_reward"

# 1. Prompts (`input`, a chat list) and labels (`label`, the /v1/reward label as a JSON string).
make_data grpo openrlhf "$DATA"
# 2. The reward server, with the same dataset so the labels' problem ids resolve.
ensure_server --queue 1024

# 3. Train. No --algo.dynamic_filtering_enable: it keeps groups whose mean `scores` (here 1 for
# a passing completion, 0 otherwise) lie strictly between the range's ends, so it would drop
# the groups where every completion passes, which are the ones the efficiency term ranks.
python3 -m openrlhf.cli.train_ppo_ray \
    --actor.model_name_or_path "$MODEL_PATH" \
    --reward.remote_url "$REWARD_URL" \
    --data.prompt_dataset "$DATA/train.jsonl" \
    --eval.dataset "$DATA/test.jsonl" \
    --data.input_key input \
    --data.label_key label \
    --data.apply_chat_template \
    --data.max_len 4096 \
    --rollout.max_new_tokens 2048 \
    --rollout.batch_size 64 \
    --rollout.n_samples_per_prompt 8 \
    --rollout.temperature 1.0 \
    --train.batch_size 512 \
    --train.micro_batch_size 2 \
    --rollout.micro_batch_size 8 \
    --train.max_epochs 1 \
    --train.num_episodes 3 \
    --algo.advantage.estimator group_norm \
    --actor.adam.lr 1e-6 \
    --actor.entropy_coef 0.0 \
    --ds.lora.rank 64 \
    --ds.lora.alpha 32 \
    --ds.zero_stage 2 \
    --ds.param_dtype bf16 \
    --actor.gradient_checkpointing_enable \
    --actor.num_nodes 1 \
    --actor.num_gpus_per_node "$NGPUS" \
    --ref.num_nodes 1 \
    --ref.num_gpus_per_node "$NGPUS" \
    --vllm.num_engines "$NGPUS" \
    --vllm.tensor_parallel_size 1 \
    --vllm.gpu_memory_utilization 0.6 \
    --train.colocate_all \
    --vllm.enable_sleep \
    --ds.enable_sleep \
    --ckpt.output_dir "$SAVE_PATH" \
    --ckpt.save_steps 50 \
    --logger.logging_steps 1 \
    "$@"
