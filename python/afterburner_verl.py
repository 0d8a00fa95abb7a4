"""Afterburner reward for verl (standard library only).

Two entry points, for the two ways verl calls a custom reward function:

``compute_score_async`` -- verl 0.8 and later (the reward loop; checked against verl v0.9.0,
``verl/experimental/reward_loop/reward_manager/naive.py`` and ``verl/trainer/ppo/reward.py``).
The naive reward manager awaits ``compute_score(data_source=, solution_str=, ground_truth=,
extra_info=, **reward_kwargs)`` once per sample, all samples of a batch at once on one event
loop. The calls are not one HTTP request each: a micro-batcher gathers the calls awaiting on
the loop (for ``batch_window_ms``, or until ``chunk_size`` are waiting) into one
``POST /v1/reward`` chunk, over a shared pool of kept-alive connections::

    reward.reward_manager.name=naive
    reward.custom_reward_function.path=/path/to/afterburner/python/afterburner_verl.py
    reward.custom_reward_function.name=compute_score_async
    +reward.custom_reward_function.reward_kwargs.urls='http://127.0.0.1:8080'
    reward.num_workers=2          # reward-loop workers; each batches on its own

``compute_score`` -- verl 0.7 and earlier, batch reward manager (one call per batch)::

    reward_model.reward_manager=batch
    custom_reward_function.path=/path/to/afterburner/python/afterburner_verl.py
    custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.url=http://127.0.0.1:8080

(verl 0.9 still accepts the top-level ``custom_reward_function.*`` keys and moves them under
``reward.``, but its reward loop has no ``batch`` manager: use ``compute_score_async`` there.)

Each sample's ``reward_model.ground_truth`` (a JSON string, as ``afterburner data grpo
--format verl`` writes it, or a dict) is a ``/v1/reward`` label::

    {"problem_id": "cc-0613857324",        # a problem of a dataset the server loaded,
     # or "tests": [{"input": "...", "expected": "..."}] for inline stdin/stdout tests
     "language": "python",                 # optional, default python
     "instruction": "time",                # time | memory | integral
     "baseline": {"passed": true, "time_ms": 120.5, "memory_kb": 14000, "integral": 9.1e5}}

Fields missing from it are taken from ``extra_info`` (or ``extra_info["afterburner"]``;
``baseline_passed``/``baseline_time_ms``/... make a baseline). Start the server with the
dataset the prompts came from (``afterburner serve --dataset coffe:PATH``) so ids resolve.

Both return, per response, ``{"score", "format", "correctness", "efficiency", "passed"}``;
verl logs all but ``score`` as reward extra info. A sandbox failure is never turned into a
made-up score: the item is sent again, then :class:`afterburner_client.AfterburnerError` is
raised, as it is when no server answers.

Settings (keyword arguments through ``reward_kwargs``, else environment variables; see
``afterburner_client.Settings``): ``urls`` (several hosts, comma-separated or a list; round
robin, failover) / ``AFTERBURNER_URLS``, ``url`` / ``AFTERBURNER_URL``, ``token`` /
``AFTERBURNER_TOKEN``, ``chunk_size`` (64), ``concurrency`` (4 requests per host), ``timeout``
(600 s per request), ``max_wait`` (1800 s over capacity), ``attempts`` (3),
``batch_window_ms`` (10). Environment variables reach verl's Ray workers only when Ray was
started from the same environment; ``reward_kwargs`` always do.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from afterburner_client import AfterburnerError, Settings, client_for, label_of, submit_async  # noqa: E402

__all__ = ["compute_score", "compute_score_async", "AfterburnerError"]


def _scored(result, where):
    """verl's per-sample dict, or an error when the server had no reward for the item."""
    if result.get("reward") is None:
        raise AfterburnerError(
            f"afterburner: {where} (problem {result.get('problem_id')}): the sandbox failed after retries, "
            f"no reward is made up: {result.get('error')}"
        )
    components = result.get("components") or {}
    return {
        "score": float(result["reward"]),
        "format": float(components.get("format", 0.0)),
        "correctness": float(components.get("correctness", 0.0)),
        "efficiency": float(components.get("efficiency", 0.0)),
        "passed": 1.0 if result.get("passed") else 0.0,
    }


def _item(response, ground_truth, extra_info, where):
    item = label_of(ground_truth, extra_info, where)
    item["response"] = response if isinstance(response, str) else str(response)
    return item


async def compute_score_async(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """Scores one response (verl's reward loop); concurrent calls share ``/v1/reward`` chunks."""
    settings = Settings.from_kwargs(kwargs)
    where = f"sample of {data_source}"
    if isinstance(extra_info, dict) and extra_info.get("index") is not None:
        where = f"sample {extra_info.get('index')} of {data_source}"
    item = _item(solution_str, ground_truth, extra_info, where)
    return _scored(await submit_async(settings, item), where)


def compute_score(data_sources, solution_strs, ground_truths, extra_infos=None, **kwargs):
    """Scores a batch of responses (verl's batch reward manager); one dict per response."""
    settings = Settings.from_kwargs(kwargs)
    n = len(solution_strs)
    if extra_infos is None:
        extra_infos = [None] * n
    if len(ground_truths) != n or len(extra_infos) != n:
        raise ValueError(f"afterburner: {n} responses but {len(ground_truths)} ground truths and {len(extra_infos)} extra infos")
    items = [_item(r, t, e, f"sample {i}") for i, (r, t, e) in enumerate(zip(solution_strs, ground_truths, extra_infos))]
    results = client_for(settings).reward(items)
    return [_scored(r, f"sample {i}") for i, r in enumerate(results)]
