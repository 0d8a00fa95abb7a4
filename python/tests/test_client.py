"""The shared client against scripted fake servers (standard library only): what it does when
servers refuse, disappear, fail in the sandbox or reject a label. The real server is exercised
by the Rust tests in crates/server/tests (python_shim.rs, trainers.rs), which run this file too.

    python3 -m unittest discover -s python/tests
"""

import asyncio
import http.server
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import afterburner_client  # noqa: E402
import afterburner_trl  # noqa: E402
import afterburner_verl  # noqa: E402
from afterburner_client import AfterburnerError, Client, Settings  # noqa: E402

LABEL = {"tests": [{"input": "1\n", "expected": "1\n"}], "instruction": "time"}


def result(item, reward=0.5, error=None):
    """A /v1/reward result for an item; the reward encodes the response for checking order."""
    if error is not None:
        return {"problem_id": "inline", "reward": None, "components": None, "passed": False, "error": error}
    return {
        "problem_id": "inline",
        "reward": reward if item["response"] == "r" else float(item["response"]),
        "components": {"format": 1.0, "correctness": 0.5, "efficiency": 0.1, "gain": 0.2},
        "passed": True,
    }


class FakeServer:
    """A /v1/reward server answering from a script: each request pops the next step, a
    function of the request's items returning (status, headers, body); the last step repeats."""

    def __init__(self, steps):
        self.steps = list(steps)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                step = fake.steps.pop(0) if len(fake.steps) > 1 else fake.steps[0]
                status, headers, answer = step(body["items"])
                raw = json.dumps(answer).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def ok(items):
    return 200, {}, {"results": [result(i) for i in items]}


def busy(seconds):
    return lambda items: (503, {"Retry-After": str(seconds)}, {"error": "over capacity"})


def dead_url():
    """A URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def items(n):
    return [dict(LABEL, response=str(float(k))) for k in range(n)]


class ClientTests(unittest.TestCase):
    def setUp(self):
        self.servers = []

    def tearDown(self):
        for s in self.servers:
            s.close()

    def client(self, **settings):
        client = Client(Settings.from_kwargs(settings))
        self.addCleanup(client.close)
        return client

    def server(self, *steps):
        s = FakeServer(steps)
        self.servers.append(s)
        return s

    def test_a_batch_is_cut_into_chunks_and_comes_back_in_order(self):
        s = self.server(ok)
        client = self.client(url=s.url, chunk_size=4)
        rewards = [r["reward"] for r in client.reward(items(10))]
        self.assertEqual(rewards, [float(k) for k in range(10)])
        self.assertEqual(sorted(len(b["items"]) for _, b in s.requests), [2, 4, 4])

    def test_a_refusal_is_waited_out_for_its_retry_after(self):
        s = self.server(busy(1), ok)
        client = self.client(url=s.url)
        started = time.monotonic()
        rewards = [r["reward"] for r in client.reward(items(3))]
        self.assertEqual(rewards, [0.0, 1.0, 2.0])
        self.assertGreaterEqual(time.monotonic() - started, 0.9, "waited for Retry-After: 1")
        self.assertEqual(len(s.requests), 2)

    def test_a_refused_chunk_goes_to_another_host_at_once(self):
        full = self.server(busy(30))
        free = self.server(ok)
        client = self.client(urls=f"{full.url},{free.url}")
        started = time.monotonic()
        for _ in range(3):
            self.assertEqual([r["reward"] for r in client.reward(items(2))], [0.0, 1.0])
        self.assertLess(time.monotonic() - started, 10, "did not wait for the full host's 30 s")
        self.assertEqual(len(full.requests), 1, "the full host was left alone after its 503")
        self.assertEqual(len(free.requests), 3)

    def test_an_unreachable_host_fails_over_to_the_next(self):
        live = self.server(ok)
        client = self.client(urls=[dead_url(), live.url], chunk_size=1)
        rewards = [r["reward"] for r in client.reward(items(4))]
        self.assertEqual(rewards, [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(len(live.requests), 4)

    def test_no_reachable_host_is_an_error_naming_the_host(self):
        url = dead_url()
        client = self.client(url=url, attempts=2)
        with self.assertRaises(AfterburnerError) as e:
            client.reward(items(1))
        self.assertIn(url, str(e.exception))
        self.assertIn("no server answered", str(e.exception))

    def test_a_sandbox_failure_is_retried_then_left_without_a_reward(self):
        failing = lambda items: (200, {}, {"results": [result(i, error="sandbox: clone failed") for i in items]})  # noqa: E731
        s = self.server(failing)
        client = self.client(url=s.url, attempts=3)
        (r,) = client.reward(items(1))
        self.assertIsNone(r["reward"])
        self.assertEqual(len(s.requests), 3, "tried three times")

    def test_only_the_failed_items_are_sent_again(self):
        def first(items):
            return 200, {}, {"results": [result(i, error="boom") if i["response"] == "1.0" else result(i) for i in items]}

        s = self.server(first, ok)
        client = self.client(url=s.url)
        self.assertEqual([r["reward"] for r in client.reward(items(3))], [0.0, 1.0, 2.0])
        self.assertEqual([len(b["items"]) for _, b in s.requests], [3, 1])

    def test_a_rejected_label_is_an_error_with_the_servers_message(self):
        s = self.server(lambda items: (400, {}, {"error": "`items[0].problem_id`: unknown problem `x`"}))
        client = self.client(url=s.url)
        with self.assertRaises(AfterburnerError) as e:
            client.reward(items(1))
        self.assertIn("unknown problem `x`", str(e.exception))
        self.assertEqual(len(s.requests), 1, "a 4xx is not retried")

    def test_a_chunk_too_large_for_the_server_is_split(self):
        def small(items):
            if len(items) > 2:
                return 413, {}, {"error": "the request carries 4 programs but the queue holds at most 2"}
            return ok(items)

        s = self.server(small)
        client = self.client(url=s.url, chunk_size=4)
        self.assertEqual([r["reward"] for r in client.reward(items(4))], [0.0, 1.0, 2.0, 3.0])
        self.assertEqual(client.max_chunk, 2)


class LabelTests(unittest.TestCase):
    def test_fields_missing_from_the_ground_truth_come_from_extra_info(self):
        label = afterburner_client.label_of(
            json.dumps({"problem_id": "cc-1", "instruction": "time"}),
            {"baseline_passed": True, "baseline_time_ms": 12.0, "baseline_memory_kb": float("nan"), "language": "python"},
        )
        self.assertEqual(label["baseline"], {"passed": True, "time_ms": 12.0, "memory_kb": None, "integral": None})
        self.assertEqual(label["language"], "python")

    def test_a_label_without_an_instruction_says_where(self):
        with self.assertRaises(ValueError) as e:
            afterburner_client.label_of({"problem_id": "cc-1"}, None, "sample 7")
        self.assertIn("sample 7", str(e.exception))
        self.assertIn("instruction", str(e.exception))

    def test_trl_takes_the_last_assistant_message(self):
        conversation = [{"role": "assistant", "content": "first"}, {"role": "user", "content": "more"}, {"role": "assistant", "content": [{"type": "text", "text": "last"}]}]
        self.assertEqual(afterburner_trl.completion_text(conversation), "last")
        self.assertEqual(afterburner_trl.completion_text("plain"), "plain")


class AsyncTests(unittest.TestCase):
    def tearDown(self):
        afterburner_client.close_all()

    def test_concurrent_calls_share_requests(self):
        s = FakeServer([ok])
        try:
            async def run():
                calls = [
                    afterburner_verl.compute_score_async("d", "r", json.dumps(LABEL), {"index": k}, url=s.url, chunk_size=8)
                    for k in range(20)
                ]
                return await asyncio.gather(*calls)

            scores = asyncio.run(run())
            self.assertEqual([x["score"] for x in scores], [0.5] * 20)
            self.assertEqual(sorted(x["passed"] for x in scores), [1.0] * 20)
            sizes = [len(b["items"]) for _, b in s.requests]
            self.assertEqual(sum(sizes), 20)
            self.assertLessEqual(len(sizes), 4, f"20 calls took {len(sizes)} requests: {sizes}")
        finally:
            s.close()

    def test_a_sandbox_failure_raises_instead_of_scoring(self):
        s = FakeServer([lambda items: (200, {}, {"results": [result(i, error="sandbox: no cgroup") for i in items]})])
        try:
            with self.assertRaises(AfterburnerError) as e:
                asyncio.run(afterburner_verl.compute_score_async("d", "r", LABEL, None, url=s.url, attempts=1))
            self.assertIn("no cgroup", str(e.exception))
            self.assertIn("no reward is made up", str(e.exception))
        finally:
            s.close()


if __name__ == "__main__":
    unittest.main()
