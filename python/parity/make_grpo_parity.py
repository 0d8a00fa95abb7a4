#!/usr/bin/env python3
"""Build the GRPO parity file `crates/train/tests/fixtures/grpo-parity.json` with TRL and PEFT.

On the tiny Qwen2 fixture with the sft-parity adapter's weights in a new PEFT adapter, two
fixed completions of one chat prompt are scored by TRL's `GRPOTrainer._compute_loss`
(`loss_type="dapo"`, epsilon 0.2, epsilon_high 0.28, beta 0.04) given fixed advantages, "old"
log-probabilities (the policy's own, shifted by fixed offsets so that ratios differ from 1 and
some are clipped) and reference log-probabilities (the model with the adapter disabled). The
script records the token ids, those inputs, the loss, and its gradient for every LoRA weight.

Float32 on CPU, eager attention. Run once on the developer machine (torch is NOT a CI
dependency), after make_train_parity.py:

    /work/venv-trl/bin/python python/parity/make_grpo_parity.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import peft
import torch
import transformers
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "crates/model/tests/fixtures/tiny-qwen2"
ADAPTER = ROOT / "crates/train/tests/fixtures/sft-parity"
OUT = ROOT / "crates/train/tests/fixtures/grpo-parity.json"

PROMPT = [{"role": "user", "content": "Print the sum of two numbers."}]
COMPLETIONS = ["print(sum(map(int, input().split())))", "a = 1\nprint(a)"]
ADVANTAGES = [1.0, -0.5]


def main() -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    saved = json.loads((ADAPTER / "adapter_config.json").read_text())
    config = LoraConfig(
        r=saved["r"], lora_alpha=saved["lora_alpha"], lora_dropout=0.0,
        target_modules=saved["target_modules"], task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    set_peft_model_state_dict(model, load_file(ADAPTER / "adapter_model.safetensors"))
    prompt_text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for c in COMPLETIONS]
    width = max(len(c) for c in completion_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    completions = torch.tensor([c + [pad] * (width - len(c)) for c in completion_ids])
    completion_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completion_ids])
    prompts = torch.tensor([prompt_ids] * len(COMPLETIONS))
    prompt_mask = torch.ones_like(prompts)
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=2, num_generations=2, max_steps=1,
            report_to=[], use_cpu=True, bf16=False, fp16=False, loss_type="dapo",
            epsilon=0.2, epsilon_high=0.28, beta=0.04, max_completion_length=width,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
            args=args,
            train_dataset=Dataset.from_list([{"prompt": PROMPT}] * 2),
            processing_class=tokenizer,
        )
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        model.train()
        input_ids = torch.cat([prompts, completions], dim=1)
        attention = torch.cat([prompt_mask, completion_mask], dim=1)
        with torch.no_grad():
            logps, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention, width)
            with model.disable_adapter():
                ref_logps, _, _ = trainer._get_per_token_logps_and_entropies(model, input_ids, attention, width)
        offsets = torch.tensor([[0.3, -0.4, 0.05, -0.02, 0.5] * 20][0][:width]).unsqueeze(0)
        old = (logps + offsets * torch.tensor([[1.0], [-1.0]])) * completion_mask
        inputs = {
            "prompt_ids": prompts,
            "prompt_mask": prompt_mask,
            "completion_ids": completions,
            "completion_mask": completion_mask,
            "advantages": torch.tensor(ADVANTAGES),
            "old_per_token_logps": old,
            "ref_per_token_logps": ref_logps,
            "num_items_in_batch": completion_mask.sum(),
        }
        trainer.current_gradient_accumulation_steps = 1
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        grads = {}
        for name, param in model.named_parameters():
            if "lora_" in name:
                if param.grad is None:
                    sys.exit(f"{name} has no gradient")
                grads[name.replace(".default", "")] = param.grad.detach().tolist()
    rollouts = []
    for i, c in enumerate(completion_ids):
        n = len(c)
        rollouts.append({
            "ids": prompt_ids + c,
            "completion_start": len(prompt_ids),
            "advantage": ADVANTAGES[i],
            "old_logps": old[i, :n].tolist(),
            "ref_logps": ref_logps[i, :n].tolist(),
        })
    parity = {
        "notes": "GRPOTrainer._compute_loss (dapo) on two fixed rollouts with fixed advantages, old and reference "
        "log-probabilities; `grads` of that loss.",
        "versions": {
            "python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "trl": trl.__version__,
        },
        "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.04,
        "rollouts": rollouts,
        "loss": loss.item(),
        "grads": grads,
    }
    OUT.write_text(json.dumps(parity, indent=1) + "\n")
    print(f"loss {loss.item():.6f}; {len(grads)} gradients -> {OUT}")


if __name__ == "__main__":
    main()
