#!/usr/bin/env python3
"""Build the SFT parity fixture of `crates/train/tests/fixtures/sft-parity/` with TRL and PEFT.

On the tiny Qwen2 fixture (`crates/model/tests/fixtures/tiny-qwen2`), with a PEFT LoRA adapter
(r 4, alpha 8, the seven projections) whose A and B are set to fixed random values (B non-zero,
so that A gets gradients too), TRL's SFTTrainer tokenizes two conversational prompt-completion
rows and collates them into one batch; the script records:

- `adapter_config.json`, `adapter_model.safetensors`: the adapter, saved by PEFT's
  `save_pretrained` (the Rust test loads it with `Adapters::load_peft`: PEFT's own files);
- `parity.json`: the rows, TRL's `input_ids` and completion mask per row, the loss
  transformers computes on the batch with TRL's labels (prompt and padding masked; the mean over
  completion tokens), the loss of `SFTTrainer.compute_loss` on the same batch, and the gradient
  of that loss with respect to every `lora_A` / `lora_B` weight, under PEFT's tensor names.

Everything in float32 on CPU with eager attention. Run once on the developer machine (torch is
NOT a CI dependency):

    /work/venv-trl/bin/python python/parity/make_train_parity.py

with Python 3.11.7, torch 2.15.0, transformers 5.24.0, peft 0.21.2, trl 1.16.0 (stored in
parity.json under "versions").
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
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "crates/model/tests/fixtures/tiny-qwen2"
OUT = ROOT / "crates/train/tests/fixtures/sft-parity"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

ROWS = [
    {
        "prompt": [
            {"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Read two numbers and print their sum."},
        ],
        "completion": [{"role": "assistant", "content": "a, b = map(int, input().split())\nprint(a + b)"}],
    },
    {
        "prompt": [{"role": "user", "content": "print hello"}],
        "completion": [{"role": "assistant", "content": "print('hello')"}],
    },
]


def main() -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=2,
            max_steps=1,
            report_to=[],
            completion_only_loss=True,
            use_cpu=True,
            bf16=False,
            fp16=False,
            max_length=None,
            padding_free=False,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
        examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
        batch = trainer.data_collator(examples)
        model.train()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        loss = out.loss
        loss.backward()
        grads = {}
        for name, param in model.named_parameters():
            if "lora_" in name:
                key = name.replace(".default", "")
                grads[key] = param.grad.detach().tolist()
        model.zero_grad()
        trainer_loss = trainer.compute_loss(model, dict(batch)).item()
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT)
    (OUT / "README.md").unlink(missing_ok=True)  # PEFT's model card template: not needed
    adapter_config = json.loads((OUT / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = "crates/model/tests/fixtures/tiny-qwen2"
    (OUT / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
    per_row = []
    for example in examples:
        ids = list(example["input_ids"])
        if "completion_mask" in example:
            mask = list(example["completion_mask"])
        else:  # TRL >= 1.x builds `labels` (-100 on the prompt) in the dataset
            mask = [int(label != -100) for label in example["labels"]]
        start = mask.index(1)
        if any(m != 1 for m in mask[start:]):
            sys.exit("the completion mask is not one block at the end")
        per_row.append({"input_ids": ids, "completion_start": start})
    parity = {
        "notes": "SFT loss and LoRA gradients computed by transformers + PEFT on TRL's tokenization "
        "and collation of `rows`; `loss` is the model's loss with TRL's labels (mean over completion "
        "tokens of the batch), `trainer_loss` SFTTrainer.compute_loss on the same batch.",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "rows": ROWS,
        "tokenized": per_row,
        "loss": loss.item(),
        "trainer_loss": trainer_loss,
        "grads": grads,
    }
    (OUT / "parity.json").write_text(json.dumps(parity, indent=1) + "\n")
    print(f"loss {loss.item():.6f} trainer_loss {trainer_loss:.6f}; {len(grads)} LoRA gradients -> {OUT}")


if __name__ == "__main__":
    main()
