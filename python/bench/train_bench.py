#!/usr/bin/env python3
"""The PyTorch side of `afterburner bench train`: LoRA SFT steps with transformers + PEFT on CPU.

    python train_bench.py make-model --shape smollm2-135m --out DIR
        writes a randomly initialised model of that real model's shape (float32 safetensors,
        config.json) plus the tiny fixture's tokenizer files, for both sides to load;
    python train_bench.py step --model DIR --seq 256 --steps 3 --lora-r 16 --threads 2
        times forward + backward + AdamW step of the model with a fresh PEFT LoRA adapter (the
        seven projections, alpha 2r) on fixed random token ids (loss on every token after the
        first), the way TRL's SFTTrainer's training step does it (its collation and logging
        excluded, so this is a lower bound of TRL's step), after one warm-up step; prints one
        JSON line: {"step_ms": [...], "peak_rss_kb": ..., "torch": ..., "threads": ...};
    python train_bench.py grpo-step ... --group 4
        the same for a GRPO loss step (TRL's, loss_type "dapo") over 4 rollouts;
    python train_bench.py serve-step ... | serve-grpo-step ...
        sets the step up, prints {"ready": true}, then runs one step per line "step" on stdin and
        prints its {"ms": ...}; at end of input, the summary. `afterburner bench train` uses these
        to alternate the two sides step by step, so that a machine whose speed drifts moves both.

Needs torch, transformers and peft (a venv outside the repository; not a CI dependency).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

SHAPES = {
    # SmolLM2-135M(-Instruct): LlamaForCausalLM, tied embeddings.
    "smollm2-135m": dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, torch_dtype="float32",
    ),
    # Qwen2.5-0.5B(-Instruct): Qwen2ForCausalLM, tied embeddings, q/k/v biases.
    "qwen2.5-0.5b": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151645, torch_dtype="float32",
    ),
}

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROOT = Path(__file__).resolve().parents[2]


def make_model(shape: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(**SHAPES[shape])
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fixture = ROOT / "crates/model/tests/fixtures/tiny-qwen2"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(fixture / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"shape": shape, "parameters": params, "out": str(out)}))


def peft_model(model_dir: Path, r: int, threads: int):
    """The model with a fresh PEFT LoRA adapter on the seven projections (alpha 2r), in training
    mode, and AdamW over the adapter's parameters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def sft_stepper(model_dir: Path, seq: int, r: int, threads: int):
    """One SFT step (forward, backward, AdamW) on fixed random ids, loss on every token after
    the first, as TRL's SFTTrainer's training step (collation and logging excluded)."""
    import torch

    model, optimizer = peft_model(model_dir, r, threads)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), generator=generator)

    def one() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return one


def grpo_stepper(model_dir: Path, seq: int, r: int, threads: int, group: int):
    """A GRPO loss step as TRL computes it (loss_type "dapo", one iteration per batch, so the
    ratio's denominator is the detached current log-probabilities; epsilon 0.2, beta 0) on
    `group` sequences of `seq` tokens whose second half is the completion."""
    import torch

    model, optimizer = peft_model(model_dir, r, threads)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.config.vocab_size, (group, seq), generator=generator)
    start_at = seq // 2
    advantages = torch.tensor([(-1.0) ** k * (1.0 + k / group) for k in range(group)])

    def one() -> float:
        # As TRL's GRPOTrainer: logits for the completion's positions only (`logits_to_keep`).
        keep = seq - start_at
        logits = model(input_ids=ids, logits_to_keep=keep + 1).logits[:, :-1, :]
        targets = ids[:, start_at:]
        logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        ratio = torch.exp(logps - logps.detach())
        clipped = torch.clamp(ratio, 0.8, 1.2)
        a = advantages.unsqueeze(1)
        per_token = -torch.min(ratio * a, clipped * a)
        loss = per_token.sum() / per_token.numel()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    return one


def timed(one) -> float:
    start = time.perf_counter()
    one()
    return (time.perf_counter() - start) * 1000


def summary(threads: int) -> dict:
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_kb": peak, "torch": torch.__version__, "threads": threads}


def run_steps(one, steps: int, threads: int) -> None:
    """Times `steps` steps after one warm-up; prints one JSON line."""
    one()
    times = [timed(one) for _ in range(steps)]
    print(json.dumps({"step_ms": times, **summary(threads)}))


def serve(one, threads: int) -> None:
    """Steps on demand, for a benchmark that alternates with another side: prints {"ready": true},
    then for each line "step" on stdin one step's {"ms": ...}; at end of input the summary."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "step":
            print(json.dumps({"ms": timed(one)}), flush=True)
        elif line.strip():
            print(json.dumps({"error": f"unknown request {line.strip()!r}"}), flush=True)
    print(json.dumps(summary(threads)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("--shape", choices=sorted(SHAPES), required=True)
    m.add_argument("--out", type=Path, required=True)
    for name in ("step", "grpo-step", "serve-step", "serve-grpo-step"):
        s = sub.add_parser(name)
        s.add_argument("--model", type=Path, required=True)
        s.add_argument("--seq", type=int, default=256)
        s.add_argument("--steps", type=int, default=3)
        s.add_argument("--lora-r", type=int, default=16)
        s.add_argument("--threads", type=int, default=2)
        s.add_argument("--group", type=int, default=4)
    args = parser.parse_args()
    if args.command == "make-model":
        make_model(args.shape, args.out)
        return
    if args.command.endswith("grpo-step"):
        one = grpo_stepper(args.model, args.seq, args.lora_r, args.threads, args.group)
    else:
        one = sft_stepper(args.model, args.seq, args.lora_r, args.threads)
    if args.command.startswith("serve-"):
        serve(one, args.threads)
    else:
        run_steps(one, args.steps, args.threads)


if __name__ == "__main__":
    sys.exit(main())
