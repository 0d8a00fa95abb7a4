"""Afterburner reward for TRL's ``GRPOTrainer`` (standard library only).

TRL calls each reward function as ``reward_func(prompts=, completions=, completion_ids=,
**columns)`` with every other dataset column passed as a keyword list (one value per
completion), plus ``trainer_state``, ``log_extra`` and ``log_metric`` (checked against TRL
v1.9.0, ``trl/trainer/grpo_trainer.py`` ``_calculate_rewards``). A ``None`` reward becomes NaN,
which TRL leaves out of the group's statistics.

    from afterburner_trl import afterburner_reward
    trainer = GRPOTrainer(model=..., reward_funcs=afterburner_reward, train_dataset=dataset, ...)

with ``dataset`` the output of ``afterburner data grpo --format trl`` (columns ``prompt``,
``ground_truth``, ``problem_id``, ``instruction``, ``language``, ``split``) and a server
started with the same dataset (``afterburner serve --dataset coffe:PATH``).

Each completion is judged on its label: the ``ground_truth`` column (a JSON string or dict,
the ``/v1/reward`` label), else the ``problem_id``/``tests``/``instruction``/``language``/
``baseline`` columns. Completions may be strings or conversational lists of messages (the
last assistant message's content is judged).

The function returns one float per completion, or ``None`` where the server could not judge
it (a sandbox failure that persisted through the retries): never a made-up score. When no
server can be reached, or a server rejects a label, it raises
:class:`afterburner_client.AfterburnerError`.

Settings come from the environment (``AFTERBURNER_URLS``, ``AFTERBURNER_TOKEN``,
``AFTERBURNER_CHUNK``...; see ``afterburner_client.Settings``), or from keyword arguments of
:func:`make_reward_function`, which builds a reward function with fixed settings.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from afterburner_client import LABEL_KEYS, AfterburnerError, Settings, client_for, label_of  # noqa: E402

__all__ = ["afterburner_reward", "make_reward_function", "completion_text", "AfterburnerError"]

# Keyword arguments TRL adds that are not dataset columns.
_TRAINER_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments")


def completion_text(completion, where="completion"):
    """The text to judge: the completion itself, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                    return "".join(p.get("text", "") for p in content if isinstance(p, dict))
                if content is None:
                    return ""
        raise ValueError(f"{where}: a conversation without an assistant message with text content")
    raise ValueError(f"{where}: expected a string or a list of messages, got {type(completion).__name__}")


def _label(columns, k):
    where = f"completion {k}"
    truth = columns.get("ground_truth")
    truth = truth[k] if truth is not None else None
    extra = {key: values[k] for key, values in columns.items() if key in LABEL_KEYS and values is not None}
    for key in ("extra_info", "reward_model"):  # verl-shaped rows work too
        values = columns.get(key)
        if values is not None and isinstance(values[k], dict):
            if key == "reward_model" and truth is None:
                truth = values[k].get("ground_truth")
            elif key == "extra_info":
                extra = dict(values[k], **extra)
    return label_of(truth, extra, where)


def _rewards(settings, prompts, completions, columns):
    n = len(completions)
    for key, values in columns.items():
        if key not in _TRAINER_KWARGS and isinstance(values, (list, tuple)) and len(values) != n:
            raise ValueError(f"afterburner: column `{key}` has {len(values)} values for {n} completions")
    items = []
    for k, completion in enumerate(completions):
        item = _label(columns, k)
        item["response"] = completion_text(completion, f"completion {k}")
        items.append(item)
    results = client_for(settings).reward(items)
    rewards = [None if r.get("reward") is None else float(r["reward"]) for r in results]
    log_metric = columns.get("log_metric")
    if callable(log_metric) and results:
        judged = [r for r in results if r.get("reward") is not None]
        log_metric("afterburner/passed", sum(1.0 for r in results if r.get("passed")) / len(results))
        log_metric("afterburner/unjudged", (len(results) - len(judged)) / len(results))
        for term in ("format", "correctness", "efficiency"):
            values = [(r.get("components") or {}).get(term, 0.0) for r in judged]
            if values:
                log_metric(f"afterburner/{term}", sum(values) / len(values))
    return rewards


def make_reward_function(**settings):
    """A TRL reward function with fixed settings (``urls``, ``token``, ``chunk_size``...)."""
    fixed = Settings.from_kwargs(settings)

    def afterburner(prompts, completions, completion_ids=None, **columns):
        return _rewards(fixed, prompts, completions, columns)

    afterburner.__doc__ = afterburner_reward.__doc__
    return afterburner


def afterburner_reward(prompts, completions, completion_ids=None, **columns):
    """The Afterburner reward of each completion (``None``: the server could not judge it).

    Settings come from the environment (``AFTERBURNER_URLS``...), read at each call."""
    return _rewards(Settings.from_kwargs({}), prompts, completions, columns)
