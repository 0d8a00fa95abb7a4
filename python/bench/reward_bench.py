#!/usr/bin/env python3
"""Rewards per second for a GRPO-sized batch: the verl shim against verl's SandboxFusion calls.

Both sides score the same batch of completions against the same running ``afterburner serve``,
in the same run:

- **shim**: ``afterburner_verl.compute_score_async`` awaited once per completion, all at once on
  one event loop, as verl's reward loop does (``RewardLoopWorker.compute_score_batch`` gathers
  ``NaiveRewardManager.run_single`` over the batch): the shim's micro-batcher turns the calls into
  ``POST /v1/reward`` chunks, each completion judged on its problem's whole suite in one
  sandboxed process and measured (the full Afterburner reward).
- **sandbox_fusion**: verl's built-in code reward (verl v0.9.0,
  ``verl/utils/reward_score/sandbox_fusion/utils.py``): per completion, the code is cut out of
  its last fenced block and every test case is one ``POST /run_code`` (``requests.post``, a new
  connection each, ``compile_timeout = run_timeout = 10``, ``memory_limit_MB = 1024``) from a
  per-completion pool of ``max(32, cpu_count * 5)`` threads, all cases gated by one semaphore
  of ``sandbox_fusion.max_concurrent = 64``; completions go through a pool of
  ``min(32, cpu_count + 4)`` threads (the event loop's default executor, where the naive
  manager runs a synchronous ``compute_score``). It yields a pass rate only, no measurement.

The batch: ``--batch`` completions spread evenly over the ``--problems`` (COFFE problems, by
id, of ``--data``): three in four are the problem's verified human solutions (cycled), one in
four another problem's solution (a wrong answer), each wrapped in the paper's
``<thinking>/<solution>`` format. With ``--labels inline`` (the default) the shim's labels
carry the problem's tests from ``testcases.json``, the very cases the SandboxFusion side sends;
with ``--labels id`` they name the problem and the server judges it on its own suite (its tests
and stress inputs: more work per completion than the SandboxFusion side does). ``--sandbox-share k`` sends one round of completions (one
per problem) in k the SandboxFusion way, on a diagonal so right and wrong answers keep their
proportions (a per-test request costs tens of ms: the whole batch, ~43,000 requests, would take
over an hour on a 2-core machine); its rewards/s are over the completions it scored.

Also printed: the shim's own overhead, the CPU time of this Python process while the shim's batch
ran (JSON, threads, the event loop: everything but waiting on the server) as a share of the
batch's wall time, and the seconds its HTTP calls spent in flight.

    ./target/release/afterburner serve --dataset coffe:../shared/data/coffe-code-contests &
    python3 python/bench/reward_bench.py --url http://127.0.0.1:8080 \
        --data ../shared/data/coffe-code-contests --batch 512 --sandbox-share 32

Standard library only, plus ``requests`` for the SandboxFusion side when installed (verl uses
it; ``urllib`` otherwise, also one connection per request).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import datetime
import hashlib
import json
import os
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import afterburner_client  # noqa: E402
import afterburner_verl  # noqa: E402

DEFAULT_PROBLEMS = "cc-0613857324,cc-a952c76555,cc-494eaf29a6,cc-1827c92676"

try:
    import requests
except ImportError:  # verl depends on requests; the fallback is also one connection per call
    requests = None


def coffe_id(prompt):
    return "cc-" + hashlib.sha256(prompt.encode()).hexdigest()[:10]


def load_problems(folder, ids):
    """{id: (verified solutions, [(stdin, stdout)])} of the COFFE problems named."""
    solutions = json.load(open(os.path.join(folder, "solutions.json")))["prompt2groundtruth"]
    tests = json.load(open(os.path.join(folder, "testcases.json")))
    by_id = {coffe_id(p): p for p in solutions}
    out = {}
    for pid in ids:
        if pid not in by_id:
            raise SystemExit(f"{pid}: no such problem in {folder}/solutions.json")
        prompt = by_id[pid]
        codes = [code for code, verified in solutions[prompt] if verified] or [c for c, _ in solutions[prompt]]
        cases = [(t["input"][0], t["output"][0]) for t in tests[prompt]]
        out[pid] = (codes, cases)
    return out


def wrap(code):
    return f"<thinking>\nA faster way.\n</thinking>\n<solution>\n```python\n{code}\n```\n</solution>"


def build_batch(problems, size):
    """[(problem id, response, correct?)] spread evenly over the problems."""
    ids = list(problems)
    batch = []
    for k in range(size):
        pid = ids[k % len(ids)]
        n = k // len(ids)
        codes, _ = problems[pid]
        if n % 4 == 3:  # another problem's solution: a wrong answer here
            other = ids[(ids.index(pid) + 1) % len(ids)]
            batch.append((pid, wrap(problems[other][0][n % len(problems[other][0])]), False))
        else:
            batch.append((pid, wrap(codes[n % len(codes)]), True))
    return batch


# ---------------------------------------------------------------------------------------------
# The shim


def shim_truths(batch, problems, labels):
    """The ground truth of each completion, as `afterburner data grpo --format verl` writes it."""
    baseline = {"passed": True, "time_ms": 500.0, "memory_kb": 20000.0, "integral": 5e6}
    if labels == "inline":  # the very cases the SandboxFusion side sends
        inline = {pid: [{"input": i, "expected": o} for i, o in cases] for pid, (_, cases) in problems.items()}
        return [json.dumps({"tests": inline[pid], "instruction": "time", "baseline": baseline}) for pid, _, _ in batch]
    # by id: the server's suite for the problem (its tests, then its stress inputs)
    return [json.dumps({"problem_id": pid, "instruction": "time", "baseline": baseline}) for pid, _, _ in batch]


def warm_up(url, batch, problems, labels):
    """One completion per problem through /v1/reward (builds suites, opens connections): the
    number of cases the server runs per problem."""
    firsts = {}
    for (pid, response, _), truth in zip(batch, shim_truths(batch, problems, labels)):
        firsts.setdefault(pid, dict(json.loads(truth), response=response))
    client = afterburner_client.client_for(afterburner_client.Settings.from_kwargs({"urls": url}))
    results = client.reward(list(firsts.values()))
    return {pid: r.get("tests") for pid, r in zip(firsts, results)}


def run_shim(url, batch, chunk_size, problems, labels):
    """The batch through `compute_score_async`, all calls awaited at once on one event loop."""
    truths = shim_truths(batch, problems, labels)
    kwargs = {"urls": url, "chunk_size": chunk_size}
    client = afterburner_client.client_for(afterburner_client.Settings.from_kwargs(kwargs))

    async def run():
        calls = [
            afterburner_verl.compute_score_async(
                data_source="afterburner/coffe",
                solution_str=response,
                ground_truth=truth,
                extra_info={"index": k},
                **kwargs,
            )
            for k, ((_, response, _), truth) in enumerate(zip(batch, truths))
        ]
        return await asyncio.gather(*calls)

    http_before, requests_before = client.http_seconds, client.requests_sent
    cpu_before = time.process_time()
    started = time.perf_counter()
    scores = asyncio.run(run())
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_before
    return {
        "wall_s": wall,
        "rewards_per_s": len(batch) / wall,
        "passed": sum(1 for s in scores if s["passed"] == 1.0),
        "python_cpu_s": cpu,
        "overhead_share": cpu / wall,
        "http_in_flight_s": client.http_seconds - http_before,
        "requests": client.requests_sent - requests_before,
    }


# ---------------------------------------------------------------------------------------------
# verl's SandboxFusion calls, reproduced


def post_run_code(url, payload, timeout):
    data = json.dumps(payload)
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if requests is not None:
        r = requests.post(url, headers=headers, data=data, timeout=timeout)
        r.raise_for_status()
        return r.json()
    req = urllib.request.Request(url, data=data.encode(), headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def sandbox_fusion_score(url, response, cases, semaphore, errors):
    """verl's ``sandbox_fusion.compute_score``: the pass rate over every case, one request each."""
    solution = response.split("```python")[-1].split("```")[0]
    timeout = 10

    def one(case):
        stdin, expected = case
        payload = {
            "compile_timeout": timeout,
            "run_timeout": timeout,
            "code": solution,
            "stdin": stdin,
            "memory_limit_MB": 1024,
            "language": "python",
            "files": {},
            "fetch_files": [],
        }
        with semaphore:
            try:
                answer = post_run_code(url, payload, timeout * 2 + 10)
            except Exception as e:  # verl counts an API error as -1 for that case
                errors.append(str(e))
                return False
        run = answer.get("run_result") or {}
        if answer.get("status") == "Success" and run.get("status") == "Finished":
            return str(run.get("stdout") or "").rstrip("\n") == str(expected).rstrip("\n")
        return False

    workers = max(32, (os.cpu_count() or 1) * 5)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, cases))
    return sum(results) / len(results)


def run_sandbox_fusion(url, batch, problems, max_concurrent):
    semaphore = threading.Semaphore(max_concurrent)
    errors = []
    per_completion = min(32, (os.cpu_count() or 1) + 4)
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=per_completion) as pool:
        scores = list(
            pool.map(lambda b: sandbox_fusion_score(url + "/run_code", b[1], problems[b[0]][1], semaphore, errors), batch)
        )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "rewards_per_s": len(batch) / wall,
        "passed": sum(1 for s in scores if s == 1.0),
        "requests": sum(len(problems[pid][1]) for pid, _, _ in batch),
        "api_errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "../../../shared/data/coffe-code-contests"))
    parser.add_argument("--problems", default=DEFAULT_PROBLEMS, help="comma-separated COFFE ids")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument(
        "--sandbox-share", type=int, default=32, help="send one round of completions in k the SandboxFusion way"
    )
    parser.add_argument(
        "--labels",
        choices=["inline", "id"],
        default="inline",
        help="inline: the shim's labels carry the problem's tests, the cases SandboxFusion gets; id: labels name the "
        "problem and the server judges it on its own suite (tests and stress inputs)",
    )
    parser.add_argument("--max-concurrent", type=int, default=64, help="verl's sandbox_fusion.max_concurrent")
    args = parser.parse_args()

    problems = load_problems(args.data, [p.strip() for p in args.problems.split(",") if p.strip()])
    batch = build_batch(problems, args.batch)
    with urllib.request.urlopen(args.url + "/status", timeout=10) as r:
        status = json.loads(r.read())
    print(
        f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%MZ}; server: {status['workers']} worker(s) on "
        f"cores {status['worker_cpus']}, queue {status['queue']['capacity']}; this machine: {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    print(f"# shim labels: {args.labels}", flush=True)
    print("# problems: " + ", ".join(f"{pid} ({len(problems[pid][1])} tests)" for pid in problems), flush=True)

    # One small warm-up each way (builds, suites, connections), not timed.
    cases = warm_up(args.url, batch, problems, args.labels)
    print("# cases the server runs per completion: " + ", ".join(f"{pid} {n}" for pid, n in cases.items()), flush=True)
    run_sandbox_fusion(args.url, [(pid, r, c) for pid, r, c in batch[: len(problems)] if len(problems[pid][1]) < 50][:1], problems, args.max_concurrent)

    shim = run_shim(args.url, batch, args.chunk_size, problems, args.labels)
    print(f"shim: {json.dumps(shim)}", flush=True)
    # Whole rounds (one completion of each problem), one round in `share`, on a diagonal so the
    # subset holds right and wrong answers in the batch's proportions.
    k, rounds = args.sandbox_share, -(-len(batch) // len(problems))
    picked = {r for r in range(rounds) if r % k == (r // k) % k}
    subset = [b for i, b in enumerate(batch) if i // len(problems) in picked]
    fusion = run_sandbox_fusion(args.url, subset, problems, args.max_concurrent)
    print(f"sandbox_fusion ({len(subset)} of {len(batch)} completions): {json.dumps(fusion)}", flush=True)
    expected_pass = sum(1 for _, _, ok in batch if ok)
    speedup = shim["rewards_per_s"] / fusion["rewards_per_s"]
    print()
    print("| path | completions | requests | wall s | rewards/s | passed | Python CPU share |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| verl shim (`compute_score_async` -> `/v1/reward`) | {len(batch)} | {shim['requests']} | {shim['wall_s']:.1f} | "
        f"{shim['rewards_per_s']:.2f} | {shim['passed']}/{len(batch)} (expected {expected_pass}) | "
        f"{100 * shim['overhead_share']:.2f}% |"
    )
    print(
        f"| verl SandboxFusion (`/run_code` per test) | {len(subset)} | {fusion['requests']} | {fusion['wall_s']:.1f} | "
        f"{fusion['rewards_per_s']:.2f} | {fusion['passed']}/{len(subset)} (expected {sum(1 for _, _, ok in subset if ok)}) | - |"
    )
    print()
    print(
        f"speed-up: {speedup:.1f}x rewards/s; shim overhead {100 * shim['overhead_share']:.2f}% of its batch time "
        f"({shim['python_cpu_s']:.2f} s CPU in {shim['wall_s']:.1f} s; HTTP in flight {shim['http_in_flight_s']:.1f} s summed "
        f"over concurrent requests); SandboxFusion API errors: {fusion['api_errors']}"
    )
    afterburner_client.close_all()


if __name__ == "__main__":
    main()
