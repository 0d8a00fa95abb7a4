"""Afterburner reward for verl's batch reward manager (standard library only).

verl configuration (see the README's `afterburner serve` section)::

    reward_model.reward_manager=batch
    custom_reward_function.path=/path/to/afterburner/python/afterburner_verl.py
    custom_reward_function.name=compute_score
    +custom_reward_function.reward_kwargs.url=http://127.0.0.1:8080

Each sample's ``reward_model.ground_truth`` (a dict, or a JSON string of one) says what to
judge the response on:

    {"problem_id": "two-sum",              # a problem of a dataset the server loaded,
     # or "tests": [{"input": "...", "expected": "..."}] for inline stdin/stdout tests
     "language": "python",                 # optional, default python
     "instruction": "time",                # time | memory | integral
     "baseline": {"passed": true, "time_ms": 120.5, "memory_kb": 14000, "integral": 9.1e5}}

Fields missing from the ground truth are taken from ``extra_info`` (or from
``extra_info["afterburner"]``) when present there.

The function posts the batch to ``POST /v1/reward`` in chunks, waits and retries when the
server is over capacity (503 with ``Retry-After``), and returns one dict per response:
``score`` (the reward) plus ``format``, ``correctness``, ``efficiency`` and ``passed``, which
verl logs as reward extra info. A sandbox failure is never turned into a made-up score: the
chunk is retried, then an error is raised.

Settings (keyword arguments, else environment variables): ``url`` / ``AFTERBURNER_URL``
(default ``http://127.0.0.1:8080``), ``token`` / ``AFTERBURNER_TOKEN``, ``chunk_size`` /
``AFTERBURNER_CHUNK`` (default 64), ``timeout`` / ``AFTERBURNER_TIMEOUT`` seconds per request
(default 600), ``max_wait`` / ``AFTERBURNER_MAX_WAIT`` total seconds of waiting for capacity
(default 1800).
"""

import json
import os
import time
import urllib.error
import urllib.request

__all__ = ["compute_score"]

_LABEL_KEYS = ("problem_id", "tests", "entry", "checker", "language", "instruction", "baseline")


def _setting(kwargs, name, env, default):
    value = kwargs.get(name)
    if value is None:
        value = os.environ.get(env)
    return default if value in (None, "") else value


def _as_dict(value, what, index):
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (str, bytes)):
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise ValueError(f"sample {index}: {what} is not JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"sample {index}: {what} is JSON but not an object")
        return parsed
    # numpy object arrays and the like hold dicts; anything else is a mistake.
    raise ValueError(f"sample {index}: {what} must be a dict or a JSON string, got {type(value).__name__}")


def _label(ground_truth, extra_info, index):
    label = _as_dict(ground_truth, "ground_truth", index)
    extra = _as_dict(extra_info, "extra_info", index) if extra_info is not None else {}
    nested = extra.get("afterburner")
    if isinstance(nested, dict):
        extra = dict(extra, **nested)
    for key in _LABEL_KEYS:
        if key not in label and key in extra:
            label[key] = extra[key]
    return {k: v for k, v in label.items() if k in _LABEL_KEYS}


def _request(url, body, token, timeout):
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"error": raw.decode("utf-8", "replace")}
        return e.code, dict(e.headers or {}), payload


def _max_batch(base, token, timeout, wanted):
    status, _, body = _request(f"{base}/status", None, token, timeout)
    if status != 200 or not isinstance(body, dict):
        raise RuntimeError(f"afterburner server at {base}: GET /status answered {status}: {body}")
    server_max = body.get("limits", {}).get("max_batch") or wanted
    return max(1, min(wanted, int(server_max)))


def _post_chunk(base, items, token, timeout, deadline):
    attempts_left = 3
    while True:
        status, headers, body = _request(f"{base}/v1/reward", {"items": items}, token, timeout)
        if status == 200:
            results = body.get("results", [])
            if len(results) != len(items):
                raise RuntimeError(f"afterburner: {len(results)} results for {len(items)} items")
            failed = [r.get("error") for r in results if r.get("reward") is None]
            if not failed:
                return results
            attempts_left -= 1
            if attempts_left == 0:
                raise RuntimeError(f"afterburner: the sandbox failed on {len(failed)} items: {failed[0]}")
            time.sleep(1.0)
            continue
        if status == 503:
            wait = float(headers.get("Retry-After") or headers.get("retry-after") or 1)
            if time.monotonic() + wait > deadline:
                raise RuntimeError(f"afterburner: server over capacity for too long: {body}")
            time.sleep(wait)
            continue
        message = body.get("error") if isinstance(body, dict) else body
        raise RuntimeError(f"afterburner: POST /v1/reward answered {status}: {message}")


def compute_score(data_sources, solution_strs, ground_truths, extra_infos=None, **kwargs):
    """Scores a batch of responses with the Afterburner reward; one dict per response."""
    base = str(_setting(kwargs, "url", "AFTERBURNER_URL", "http://127.0.0.1:8080")).rstrip("/")
    token = _setting(kwargs, "token", "AFTERBURNER_TOKEN", None)
    timeout = float(_setting(kwargs, "timeout", "AFTERBURNER_TIMEOUT", 600))
    max_wait = float(_setting(kwargs, "max_wait", "AFTERBURNER_MAX_WAIT", 1800))
    wanted = int(_setting(kwargs, "chunk_size", "AFTERBURNER_CHUNK", 64))
    n = len(solution_strs)
    if extra_infos is None:
        extra_infos = [None] * n
    if len(ground_truths) != n or len(extra_infos) != n:
        raise ValueError(f"{n} responses but {len(ground_truths)} ground truths and {len(extra_infos)} extra infos")
    items = []
    for i, (response, truth, extra) in enumerate(zip(solution_strs, ground_truths, extra_infos)):
        item = _label(truth, extra, i)
        if "instruction" not in item:
            raise ValueError(f"sample {i}: no `instruction` (time, memory or integral) in its ground truth")
        item["response"] = response
        items.append(item)
    if not items:
        return []
    chunk = _max_batch(base, token, timeout, wanted)
    deadline = time.monotonic() + max_wait
    results = []
    for start in range(0, len(items), chunk):
        results.extend(_post_chunk(base, items[start:start + chunk], token, timeout, deadline))
    scores = []
    for r in results:
        components = r.get("components") or {}
        scores.append({
            "score": float(r["reward"]),
            "format": float(components.get("format", 0.0)),
            "correctness": float(components.get("correctness", 0.0)),
            "efficiency": float(components.get("efficiency", 0.0)),
            "passed": 1.0 if r.get("passed") else 0.0,
        })
    return scores
