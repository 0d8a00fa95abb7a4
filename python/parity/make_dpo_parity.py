#!/usr/bin/env python3
"""Build the DPO parity file `crates/train/tests/fixtures/dpo-parity.json` with TRL and PEFT.

On the tiny Qwen2 fixture with the PEFT adapter of `crates/train/tests/fixtures/sft-parity/`
(its weights put into a new PEFT adapter, so that TRL takes the reference from the model with
the adapter disabled, as for any new adapter; its B is non-zero, so the policy differs from the
reference), TRL's DPOTrainer (`loss_type="sigmoid"`, beta 0.1, no
reference model: the reference is the same model with the adapter disabled) tokenizes two
conversational preference rows and collates them into one batch; the script records each row's
`prompt_ids`, `chosen_ids` and `rejected_ids`, the batch's loss from `DPOTrainer.compute_loss`,
the logged rewards, and the loss's gradient for every `lora_A` / `lora_B` weight.

Float32 on CPU, eager attention. Run once on the developer machine (torch is NOT a CI
dependency), after make_train_parity.py:

    /work/venv-trl/bin/python python/parity/make_dpo_parity.py
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
from trl import DPOConfig, DPOTrainer

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "crates/model/tests/fixtures/tiny-qwen2"
ADAPTER = ROOT / "crates/train/tests/fixtures/sft-parity"
OUT = ROOT / "crates/train/tests/fixtures/dpo-parity.json"

ROWS = [
    {
        "prompt": [
            {"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Read n and print n squared."},
        ],
        "chosen": [{"role": "assistant", "content": "n = int(input())\nprint(n * n)"}],
        "rejected": [{"role": "assistant", "content": "n = int(input())\nprint(sum(n for _ in range(n)))"}],
    },
    {
        "prompt": [{"role": "user", "content": "print hello"}],
        "chosen": [{"role": "assistant", "content": "print('hello')"}],
        "rejected": [{"role": "assistant", "content": "print('hell')"}],
    },
]


def main() -> None:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    # A new adapter (so that TRL's reference is the model with it disabled, not a saved copy),
    # given the sft-parity adapter's weights.
    saved = json.loads((ADAPTER / "adapter_config.json").read_text())
    config = LoraConfig(
        r=saved["r"],
        lora_alpha=saved["lora_alpha"],
        lora_dropout=0.0,
        target_modules=saved["target_modules"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    result = set_peft_model_state_dict(model, load_file(ADAPTER / "adapter_model.safetensors"))
    if result.unexpected_keys:
        sys.exit(f"unexpected adapter keys: {result.unexpected_keys}")
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=2,
            max_steps=1,
            report_to=[],
            beta=0.1,
            loss_type=["sigmoid"],
            use_cpu=True,
            bf16=False,
            fp16=False,
            max_length=None,
            precompute_ref_log_probs=False,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(ROWS),
            processing_class=tokenizer,
        )
        # TRL keeps a frozen copy ("ref") of an adapter that was passed in already trained, and
        # takes the reference from it; for a new adapter the reference is the model with the
        # adapter disabled, which is what Afterburner does. Drop the copy to get that case with
        # non-zero adapter weights (otherwise policy == reference and the check is trivial).
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        examples = [trainer.train_dataset[i] for i in range(len(ROWS))]
        batch = trainer.data_collator(examples)
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        grads = {}
        for name, param in model.named_parameters():
            if "lora_" in name:
                if param.grad is None:
                    sys.exit(f"{name} has no gradient")
                grads[name.replace(".default", "")] = param.grad.detach().tolist()
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
    tokenized = [
        {"prompt_ids": list(e["prompt_ids"]), "chosen_ids": list(e["chosen_ids"]), "rejected_ids": list(e["rejected_ids"])}
        for e in examples
    ]
    parity = {
        "notes": "DPO sigmoid loss (beta 0.1) of DPOTrainer.compute_loss on TRL's tokenization and collation of "
        "`rows`, the reference being the model with the sft-parity adapter disabled; `grads` of that loss.",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "beta": 0.1,
        "rows": ROWS,
        "tokenized": tokenized,
        "loss": loss.item(),
        "metrics": metrics,
        "grads": grads,
    }
    OUT.write_text(json.dumps(parity, indent=1) + "\n")
    print(f"loss {loss.item():.6f}; metrics {sorted(metrics)}; {len(grads)} gradients -> {OUT}")


if __name__ == "__main__":
    main()
