#!/usr/bin/env python3
"""GRPO with TRL's GRPOTrainer and the Afterburner reward (SPEC section 7).

Reads the output of ``afterburner data grpo --format trl --out DIR`` (``train.jsonl`` and
``test.jsonl``, or ``.parquet`` with ``--file-format parquet``; columns ``prompt`` (chat list),
``ground_truth`` (the ``/v1/reward`` label as a JSON string), ``problem_id``, ``split``...) with
``datasets`` and rewards each completion through ``afterburner serve``
(``python/afterburner_trl.py``), which must have loaded the same dataset.

Checked against TRL v1.9.0 (huggingface/trl, commit 35def3ee000a): ``GRPOConfig`` fields in
``trl/trainer/grpo_config.py``; reward functions are called as ``f(prompts=, completions=,
completion_ids=, **columns)`` in ``GRPOTrainer._calculate_rewards``; ``remove_unused_columns``
defaults to False there, so ``ground_truth`` reaches the reward function.

    afterburner data grpo --dataset coffe:../shared/data/coffe-code-contests --format trl --out data/grpo-trl
    sudo afterburner serve --dataset coffe:../shared/data/coffe-code-contests &
    python3 recipes/trl-grpo/train.py --data data/grpo-trl --model Qwen/Qwen2.5-Coder-1.5B-Instruct

``--cpu`` trains on the CPU in float32 (a smoke test with a tiny model; see recipes/README.md).
"""

import argparse
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "python"))

from afterburner_trl import make_reward_function  # noqa: E402


def load_rows(data_dir):
    """The train and test splits of an `afterburner data grpo --format trl` folder."""
    from datasets import load_dataset

    for ext, builder in (("parquet", "parquet"), ("jsonl", "json")):
        train = os.path.join(data_dir, f"train.{ext}")
        if os.path.exists(train):
            files = {"train": train}
            test = os.path.join(data_dir, f"test.{ext}")
            if os.path.exists(test) and os.path.getsize(test) > 0:  # --test-share 0 leaves it empty
                files["test"] = test
            return load_dataset(builder, data_files=files)
    raise SystemExit(f"{data_dir}: no train.parquet or train.jsonl (make it with `afterburner data grpo --format trl --out {data_dir}`)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the `afterburner data grpo --format trl` folder")
    p.add_argument("--model", default="Qwen/Qwen2.5-Coder-1.5B-Instruct", help="a model id or folder")
    p.add_argument("--urls", default=os.environ.get("AFTERBURNER_URLS", "http://127.0.0.1:8080"), help="afterburner serve URLs, comma-separated")
    p.add_argument("--output-dir", default="checkpoints/trl-grpo")
    p.add_argument("--num-generations", type=int, default=8, help="completions per prompt (the GRPO group)")
    p.add_argument("--per-device-batch", type=int, default=8, help="completions per device and step")
    p.add_argument("--max-completion-length", type=int, default=1024)
    p.add_argument("--learning-rate", type=float, default=1e-6)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (0: full fine-tuning; needs peft)")
    p.add_argument("--use-vllm", action="store_true", help="generate with vLLM (colocated)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU in float32")
    args = p.parse_args()

    from trl import GRPOConfig, GRPOTrainer

    data = load_rows(args.data)
    config = GRPOConfig(
        output_dir=args.output_dir,
        num_generations=args.num_generations,
        per_device_train_batch_size=args.per_device_batch,
        max_completion_length=args.max_completion_length,
        learning_rate=args.learning_rate,
        temperature=1.0,
        beta=0.0,  # no KL term, as the paper
        max_steps=args.max_steps,
        logging_steps=1,
        report_to="none",
        use_vllm=args.use_vllm,
        bf16=not args.cpu,
        use_cpu=args.cpu,
        gradient_checkpointing=not args.cpu,
    )
    peft_config = None
    if args.lora_rank > 0:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=args.model,
        reward_funcs=make_reward_function(urls=args.urls),
        args=config,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
