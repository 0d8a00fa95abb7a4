"""Reads `afterburner data` output back with Hugging Face `datasets` (as TRL, verl, OpenRLHF and
LLaMA-Factory load their files) and checks every row against the schema its trainer reads.

    python3 python/check_training_data.py DIR

DIR is the output folder of `afterburner data sft|dpo|grpo --format F --out DIR`; the kind and
format are read from its `manifest.json`. Prints one JSON summary line and exits 0 when every
check holds; otherwise prints what failed (file, row, why) and exits 1. Needs `datasets` and
`pyarrow` (`pip install datasets pyarrow`); no torch.
"""

import json
import os
import sys


def fail(where, why):
    print(f"{where}: {why}", file=sys.stderr)
    sys.exit(1)


def is_chat(value, roles=None):
    """A conversational column as TRL's `is_conversational` and chat templates expect it."""
    if not isinstance(value, list) or not value:
        return False
    for message in value:
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return False
        if not isinstance(message["content"], str):
            return False
        if roles is not None and message["role"] not in roles:
            return False
    return True


def assistant_only(value):
    return is_chat(value, roles={"assistant"}) and len(value) == 1


def prompt_chat(value):
    return is_chat(value, roles={"system", "user"}) and value[-1]["role"] == "user"


def answer(text):
    return isinstance(text, str) and "<thinking>" in text and "<solution>" in text


def label(text, where):
    try:
        parsed = json.loads(text)
    except (TypeError, ValueError) as e:
        fail(where, f"the label is not JSON: {e}")
    for key in ("problem_id", "language", "instruction"):
        if not isinstance(parsed.get(key), str):
            fail(where, f"the label lacks a string `{key}`: {parsed}")
    if parsed["instruction"] not in ("time", "memory", "integral"):
        fail(where, f"unknown instruction in {parsed}")
    baseline = parsed.get("baseline")
    if baseline is not None and not isinstance(baseline.get("passed"), bool):
        fail(where, f"the baseline lacks `passed`: {parsed}")
    return parsed


def check_row(kind, fmt, row, where):
    """Checks one row; returns (problem_id, split)."""
    if fmt == "verl":
        info = row.get("extra_info")
        if not isinstance(info, dict) or not isinstance(info.get("index"), int):
            fail(where, "verl rows need extra_info with an integer index")
        if not str(row.get("data_source", "")).startswith("afterburner/"):
            fail(where, f"data_source {row.get('data_source')!r}")
        if kind == "sft":
            messages = row["messages"]
            if not is_chat(messages) or messages[-1]["role"] != "assistant":
                fail(where, "verl SFT `messages` must be a chat ending with the assistant")
            if not answer(messages[-1]["content"]):
                fail(where, "the assistant message is not in the answer format")
        else:
            if not prompt_chat(row["prompt"]):
                fail(where, "verl `prompt` must be a chat list of system/user messages")
            if row["ability"] != "code":
                fail(where, f"ability {row['ability']!r}")
            reward = row["reward_model"]
            if reward.get("style") != "rule":
                fail(where, f"reward_model.style {reward.get('style')!r}")
            parsed = label(reward["ground_truth"], where)
            if parsed["problem_id"] != info["problem_id"]:
                fail(where, "ground_truth and extra_info name different problems")
        return info["problem_id"], info["split"]
    if not isinstance(row.get("problem_id"), str) or row.get("split") not in ("train", "test"):
        fail(where, "every row needs `problem_id` and `split`")
    if fmt == "llamafactory":
        for key in ("system", "instruction", "input"):
            if not isinstance(row.get(key), str):
                fail(where, f"alpaca column `{key}` must be a string")
        if row["input"] != "":
            fail(where, "`input` is empty by design (the whole prompt is the instruction)")
        keys = ("output",) if kind == "sft" else ("chosen", "rejected")
        for key in keys:
            if not answer(row.get(key)):
                fail(where, f"`{key}` is not an answer in the format asked for")
        return row["problem_id"], row["split"]
    prompt_key = "input" if fmt == "openrlhf" and kind != "dpo" else "prompt"
    if not prompt_chat(row.get(prompt_key)):
        fail(where, f"`{prompt_key}` must be a chat list of system/user messages")
    if kind == "sft":
        key = "completion" if fmt == "trl" else "output"
        if not assistant_only(row.get(key)) or not answer(row[key][0]["content"]):
            fail(where, f"`{key}` must be one assistant message in the answer format")
    elif kind == "dpo":
        for key in ("chosen", "rejected"):
            if not assistant_only(row.get(key)) or not answer(row[key][0]["content"]):
                fail(where, f"`{key}` must be one assistant message in the answer format")
        if row["chosen"] == row["rejected"]:
            fail(where, "chosen and rejected are the same")
    else:
        key = "ground_truth" if fmt == "trl" else "label"
        parsed = label(row.get(key), where)
        if parsed["problem_id"] != row["problem_id"]:
            fail(where, "the label and the row name different problems")
    return row["problem_id"], row["split"]


def main():
    if len(sys.argv) != 2:
        fail("usage", "check_training_data.py DIR")
    folder = sys.argv[1]
    import datasets  # noqa: E402 (imported late so `--help`-like misuse fails fast)

    datasets.disable_progress_bars()
    with open(os.path.join(folder, "manifest.json")) as f:
        manifest = json.load(f)
    kind, fmt, file_format = manifest["kind"], manifest["format"], manifest["file_format"]
    builder = "parquet" if file_format == "parquet" else "json"
    splits_of = {}
    counts = {}
    for split, name in manifest["files"].items():
        path = os.path.join(folder, name)
        if manifest["counts"][split] == 0:
            counts[split] = 0
            continue
        loaded = datasets.load_dataset(builder, data_files={split: path}, split=split)
        if len(loaded) != manifest["counts"][split]:
            fail(path, f"{len(loaded)} rows, the manifest says {manifest['counts'][split]}")
        for i, row in enumerate(loaded):
            problem, row_split = check_row(kind, fmt, row, f"{path} row {i + 1}")
            if row_split != split:
                fail(f"{path} row {i + 1}", f"split {row_split!r} in the {split} file")
            splits_of.setdefault(problem, set()).add(split)
        counts[split] = len(loaded)
    both = sorted(p for p, s in splits_of.items() if len(s) > 1)
    if both:
        fail(folder, f"problems in two splits: {both}")
    if fmt == "llamafactory":
        with open(os.path.join(folder, "dataset_info.json")) as f:
            info = json.load(f)
        for name, entry in info.items():
            if not os.path.isfile(os.path.join(folder, entry["file_name"])):
                fail("dataset_info.json", f"{name}: no file {entry['file_name']}")
            if entry.get("ranking", False) != (kind == "dpo"):
                fail("dataset_info.json", f"{name}: ranking must be {kind == 'dpo'}")
    print(json.dumps({"kind": kind, "format": fmt, "rows": counts, "problems": len(splits_of)}))


if __name__ == "__main__":
    main()
