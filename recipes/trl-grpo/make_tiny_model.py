#!/usr/bin/env python3
"""A tiny random Qwen2 model and tokenizer, for smoke-testing train.py on a CPU without a hub.

The tokenizer is a byte-level BPE trained on the prompts of an ``afterburner data grpo
--format trl`` folder (2,000 tokens, Qwen's ``<|im_start|>``/``<|im_end|>`` chat template), the
model a ``Qwen2ForCausalLM`` with random weights (hidden 64, 2 layers, 4 heads / 2 KV heads,
tied embeddings). It writes nonsense, so every completion is judged ``no_code``: this checks
the plumbing (data, generation, the reward function against a live server, the update), not
learning.

    python3 recipes/trl-grpo/make_tiny_model.py --data DIR --out /tmp/tiny-qwen2
"""

import argparse
import json
import os

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def texts(data_dir):
    """Every message of the folder's train split (the tokenizer's training text)."""
    path = os.path.join(data_dir, "train.jsonl")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: missing (make it with `afterburner data grpo --format trl --out {data_dir}`)")
    with open(path) as f:
        for line in f:
            for message in json.loads(line)["prompt"]:
                yield message["content"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts(args.data),
        trainers.BpeTrainer(vocab_size=2000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
    )
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.out}: Qwen2, {sum(x.numel() for x in model.parameters())} parameters, vocabulary {len(tokenizer)}")


if __name__ == "__main__":
    main()
