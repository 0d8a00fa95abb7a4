#!/usr/bin/env bash
# GRPO + LoRA with verl and the Afterburner reward (SPEC section 7): vLLM rollouts, FSDP
# training, the reward computed by `afterburner serve` through python/afterburner_verl.py.
#
# Every key below was checked against verl v0.9.0 (verl-project/verl, tag v0.9.0, commit
# 483b8a009ba3): verl/trainer/config/_generated_ppo_trainer.yaml for the trainer keys,
# verl/trainer/config/reward/reward.yaml and verl/trainer/ppo/reward.py (get_custom_reward_fn,
# which passes reward.custom_reward_function.reward_kwargs to the function) for the reward keys,
# examples/tuning/lora/run_qwen3_8b_fsdp.sh for the LoRA ones. verl 0.7 and earlier: see
# recipes/README.md (batch reward manager, compute_score).
#
#   bash recipes/verl-grpo/run.sh [more hydra overrides...]
#
# Environment (defaults in brackets): MODEL_PATH [Qwen/Qwen2.5-Coder-3B-Instruct], DATA
# [$HOME/data/afterburner-grpo-verl], NGPUS [8], ROLLOUT_N [8], LORA_RANK [64], plus
# recipes/common.sh's AFTERBURNER, DATASET, AFTERBURNER_URLS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

MODEL_PATH=${MODEL_PATH:-Qwen/Qwen2.5-Coder-3B-Instruct}
DATA=${DATA:-$HOME/data/afterburner-grpo-verl}
NGPUS=${NGPUS:-8}
ROLLOUT_N=${ROLLOUT_N:-8}
LORA_RANK=${LORA_RANK:-64}

# 1. Prompts with their original solution's measured performance: train.parquet, test.parquet.
make_data grpo verl "$DATA"
# 2. The reward server, with the same dataset so the rows' problem ids resolve.
ensure_server --queue 1024

# 3. Train. The reward loop awaits compute_score_async once per sample; the shim gathers the
# concurrent calls of each reward worker into /v1/reward chunks. Keep the server's --queue at
# least reward.num_workers x concurrency (4) x chunk_size (64), or the shim waits on 503s.
python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    algorithm.use_kl_in_reward=False \
    data.train_files="$DATA/train.parquet" \
    data.val_files="$DATA/test.parquet" \
    data.train_batch_size=64 \
    data.max_prompt_length=2048 \
    data.max_response_length=2048 \
    data.filter_overlong_prompts=True \
    data.truncation=error \
    actor_rollout_ref.model.path="$MODEL_PATH" \
    actor_rollout_ref.model.lora_rank="$LORA_RANK" \
    actor_rollout_ref.model.lora_alpha=32 \
    actor_rollout_ref.model.target_modules=all-linear \
    actor_rollout_ref.model.use_remove_padding=True \
    actor_rollout_ref.model.enable_gradient_checkpointing=True \
    actor_rollout_ref.actor.optim.lr=1e-6 \
    actor_rollout_ref.actor.ppo_mini_batch_size=32 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.actor.entropy_coeff=0 \
    actor_rollout_ref.rollout.name=vllm \
    actor_rollout_ref.rollout.n="$ROLLOUT_N" \
    actor_rollout_ref.rollout.temperature=1.0 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
    actor_rollout_ref.rollout.load_format=safetensors \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 \
    reward.num_workers=2 \
    reward.reward_manager.name=naive \
    reward.custom_reward_function.path="$REPO_DIR/python/afterburner_verl.py" \
    reward.custom_reward_function.name=compute_score_async \
    "+reward.custom_reward_function.reward_kwargs.urls='$AFTERBURNER_URLS'" \
    trainer.logger='["console"]' \
    trainer.project_name=afterburner \
    trainer.experiment_name=grpo-lora \
    trainer.n_gpus_per_node="$NGPUS" \
    trainer.nnodes=1 \
    trainer.critic_warmup=0 \
    trainer.val_before_train=True \
    trainer.save_freq=50 \
    trainer.test_freq=10 \
    trainer.total_epochs=3 \
    "$@"
