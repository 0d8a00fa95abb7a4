"""The HTTP client every Afterburner trainer shim shares (standard library only).

It posts model responses with their labels to ``POST /v1/reward`` of one or more
``afterburner serve`` hosts and hands back the server's per-item results. The verl shim
(``afterburner_verl.py``) and the TRL reward function (``afterburner_trl.py``) are thin
layers over it; nothing here knows about either trainer.

What it guarantees:

- **Chunks.** A batch is cut into chunks of at most ``chunk_size`` items; each chunk is one
  request. Up to ``concurrency`` chunks per host are in flight at once, each on a kept-alive
  connection of a small per-thread pool.
- **Several hosts.** Chunks go to the hosts in turn (round robin). A host that answers
  ``503`` is left alone for its ``Retry-After`` seconds and the chunk goes to another one (or
  waits, when every host is over capacity); a host that cannot be reached (refused, reset,
  timed out) is left alone for a growing pause and the chunk fails over to the next host.
- **No made-up rewards.** An item the server could not judge (``reward: null``, a sandbox
  failure) is sent again, up to ``attempts`` times; if it still has no reward its result keeps
  ``reward: None`` and the server's ``error``, and the caller decides (verl: raise; TRL:
  ``None``). When no host answers within ``max_wait`` seconds, or a host rejects the request
  (``4xx``: a malformed label, an unknown problem), :class:`AfterburnerError` is raised with
  the host, the endpoint and the server's message.

Settings come from keyword arguments, else environment variables, else defaults
(see :class:`Settings`).
"""

import asyncio
import concurrent.futures
import http.client
import json
import os
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass

__all__ = [
    "AfterburnerError",
    "Client",
    "Settings",
    "client_for",
    "close_all",
    "label_of",
    "submit_async",
]

DEFAULT_URL = "http://127.0.0.1:8080"

# The fields of a /v1/reward item besides `response` (SPEC section 7 labels).
LABEL_KEYS = ("problem_id", "tests", "entry", "checker", "language", "instruction", "baseline")


class AfterburnerError(RuntimeError):
    """The server could not be asked, or refused the request: no reward exists to return."""


@dataclass(frozen=True)
class Settings:
    """How to reach the servers; every field has a keyword, an environment variable and a default.

    ============  =======================  =======================  ======================
    field         keyword                  environment              default
    ============  =======================  =======================  ======================
    urls          ``urls`` (list or        ``AFTERBURNER_URLS``     ``http://127.0.0.1:8080``
                  comma-separated) or      (comma-separated) or
                  ``url``                  ``AFTERBURNER_URL``
    token         ``token``                ``AFTERBURNER_TOKEN``    none
    chunk_size    ``chunk_size``           ``AFTERBURNER_CHUNK``    64 items per request
    concurrency   ``concurrency``          ``AFTERBURNER_CONCURRENCY``  4 requests per host
    timeout       ``timeout``              ``AFTERBURNER_TIMEOUT``  600 s per request
    max_wait      ``max_wait``             ``AFTERBURNER_MAX_WAIT`` 1800 s without an answer
    attempts      ``attempts``             ``AFTERBURNER_ATTEMPTS`` 3 tries per item
    window_ms     ``batch_window_ms``      ``AFTERBURNER_BATCH_WINDOW_MS``  10 ms (async calls)
    ============  =======================  =======================  ======================
    """

    urls: tuple
    token: str = None
    chunk_size: int = 64
    concurrency: int = 4
    timeout: float = 600.0
    max_wait: float = 1800.0
    attempts: int = 3
    window_ms: float = 10.0

    @staticmethod
    def from_kwargs(kwargs):
        """Settings from a trainer's keyword arguments, then the environment, then defaults."""

        def pick(name, env, default, convert):
            value = kwargs.get(name)
            if value is None or value == "":
                value = os.environ.get(env)
            if value is None or value == "":
                return default
            try:
                return convert(value)
            except (TypeError, ValueError):
                raise ValueError(f"afterburner: setting `{name}` (or ${env}) = {value!r} is not a valid {convert.__name__}") from None

        urls = kwargs.get("urls") or kwargs.get("url") or os.environ.get("AFTERBURNER_URLS") or os.environ.get("AFTERBURNER_URL") or DEFAULT_URL
        if isinstance(urls, str):
            urls = urls.split(",")
        urls = tuple(str(u).strip().rstrip("/") for u in urls if str(u).strip())
        if not urls:
            raise ValueError("afterburner: `urls` names no server")
        for url in urls:
            parsed = urllib.parse.urlsplit(url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError(f"afterburner: {url!r} is not an http(s)://HOST[:PORT] URL")
        settings = Settings(
            urls=urls,
            token=pick("token", "AFTERBURNER_TOKEN", None, str),
            chunk_size=pick("chunk_size", "AFTERBURNER_CHUNK", 64, int),
            concurrency=pick("concurrency", "AFTERBURNER_CONCURRENCY", 4, int),
            timeout=pick("timeout", "AFTERBURNER_TIMEOUT", 600.0, float),
            max_wait=pick("max_wait", "AFTERBURNER_MAX_WAIT", 1800.0, float),
            attempts=pick("attempts", "AFTERBURNER_ATTEMPTS", 3, int),
            window_ms=pick("batch_window_ms", "AFTERBURNER_BATCH_WINDOW_MS", 10.0, float),
        )
        for name in ("chunk_size", "concurrency", "attempts"):
            if getattr(settings, name) < 1:
                raise ValueError(f"afterburner: `{name}` must be at least 1, got {getattr(settings, name)}")
        return settings


# ---------------------------------------------------------------------------------------------
# Labels


def _as_dict(value, what, where):
    if value is None:
        return {}
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (str, bytes)):
        try:
            parsed = json.loads(value)
        except ValueError as e:
            raise ValueError(f"{where}: {what} is not JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"{where}: {what} is JSON but not an object")
        return parsed
    # Parquet readers hand over mappings of their own (numpy object arrays hold dicts).
    if hasattr(value, "keys") and hasattr(value, "__getitem__"):
        return {k: value[k] for k in value.keys()}
    raise ValueError(f"{where}: {what} must be a dict or a JSON string, got {type(value).__name__}")


def _plain(value):
    """Parquet readers give numpy scalars and arrays; JSON wants Python values."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and value != value:
        return None  # NaN: a missing figure (JSON has no NaN)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def label_of(ground_truth, extra_info=None, where="sample"):
    """The /v1/reward label of one sample: its ground truth (a dict or a JSON string, as
    ``afterburner data`` writes it), with fields it lacks taken from ``extra_info`` (or
    ``extra_info["afterburner"]``). ``baseline_*`` fields of ``extra_info`` make a baseline
    when neither has one. Raises ``ValueError`` saying where and why when there is no
    instruction."""
    label = _as_dict(ground_truth, "ground_truth", where)
    extra = _as_dict(extra_info, "extra_info", where)
    nested = extra.get("afterburner")
    if isinstance(nested, dict):
        extra = dict(extra, **nested)
    for key in LABEL_KEYS:
        if key not in label and extra.get(key) is not None:
            label[key] = extra[key]
    if "baseline" not in label and extra.get("baseline_passed") is not None:
        label["baseline"] = {
            "passed": bool(extra["baseline_passed"]),
            "time_ms": extra.get("baseline_time_ms"),
            "memory_kb": extra.get("baseline_memory_kb"),
            "integral": extra.get("baseline_integral"),
        }
    label = {k: _plain(v) for k, v in label.items() if k in LABEL_KEYS and v is not None}
    if "instruction" not in label:
        raise ValueError(f"{where}: no `instruction` (time, memory or integral) in its ground truth or extra_info")
    if "problem_id" not in label and "tests" not in label:
        raise ValueError(f"{where}: neither `problem_id` nor `tests` in its ground truth or extra_info: nothing to judge the response on")
    return label


# ---------------------------------------------------------------------------------------------
# Hosts and connections


class _Hosts:
    """Round robin over the hosts, skipping those on hold (over capacity, or unreachable)."""

    def __init__(self, urls):
        self.urls = list(urls)
        self.not_before = [0.0] * len(urls)
        self.next = 0
        self.lock = threading.Lock()

    def acquire(self, deadline, why):
        """The next host not on hold, waiting for the first to come off hold if all are."""
        while True:
            with self.lock:
                now = time.monotonic()
                n = len(self.urls)
                for k in range(n):
                    i = (self.next + k) % n
                    if self.not_before[i] <= now:
                        self.next = (i + 1) % n
                        return i
                wake = min(self.not_before)
            if wake > deadline:
                raise AfterburnerError(f"afterburner: no server could take the request within max_wait: {why()}")
            time.sleep(max(0.0, wake - time.monotonic()))

    def hold(self, i, seconds):
        with self.lock:
            self.not_before[i] = max(self.not_before[i], time.monotonic() + seconds)


class _Connections(threading.local):
    """Each thread's kept-alive connections, one per host."""

    def __init__(self):
        self.by_host = {}


class Client:
    """Posts items to ``/v1/reward`` on the hosts of its :class:`Settings`; thread-safe."""

    def __init__(self, settings):
        self.settings = settings
        self.hosts = _Hosts(settings.urls)
        self.parsed = [urllib.parse.urlsplit(u) for u in settings.urls]
        self.connections = _Connections()
        self._opened = weakref.WeakSet()  # every live connection of every thread, for close()
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.concurrency * len(settings.urls), thread_name_prefix="afterburner"
        )
        # Lowered when a server answers 413 (its queue or --max-batch is smaller than a chunk).
        self.max_chunk = settings.chunk_size
        # Seconds spent inside HTTP calls (sending, waiting, reading), for overhead figures.
        self.http_seconds = 0.0
        self.requests_sent = 0
        self._stats_lock = threading.Lock()

    # -- one request --------------------------------------------------------------------------

    def _connection(self, i):
        conn = self.connections.by_host.get(i)
        if conn is None:
            p = self.parsed[i]
            cls = http.client.HTTPSConnection if p.scheme == "https" else http.client.HTTPConnection
            conn = cls(p.hostname, p.port, timeout=self.settings.timeout)
            self.connections.by_host[i] = conn
            with self._stats_lock:
                self._opened.add(conn)
        return conn

    def _drop(self, i):
        conn = self.connections.by_host.pop(i, None)
        if conn is not None:
            conn.close()

    def request(self, i, method, path, body=None):
        """One request to host ``i``: ``(status, headers, parsed JSON body)``. Raises ``OSError``
        or ``http.client.HTTPException`` when the host cannot be reached or hangs up."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        prefix = self.parsed[i].path.rstrip("/")
        started = time.perf_counter()
        try:
            try:
                status, response, raw = self._exchange(i, method, prefix + path, data, headers)
            except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
                # Most often a kept-alive connection the server closed meanwhile: once more on a
                # fresh one (rewarding is idempotent, so a replay is harmless).
                status, response, raw = self._exchange(i, method, prefix + path, data, headers)
        finally:
            with self._stats_lock:
                self.http_seconds += time.perf_counter() - started
                self.requests_sent += 1
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = {"error": raw.decode("utf-8", "replace")[:500]}
        return status, response, payload

    def _exchange(self, i, method, path, data, headers):
        conn = self._connection(i)
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except BaseException:
            self._drop(i)
            raise
        if (response.getheader("Connection") or "").lower() == "close":
            self._drop(i)
        return response.status, response, raw

    # -- a chunk, with retries ------------------------------------------------------------------

    def reward_chunk(self, items):
        """The server's result for each item (same order). Items the sandbox failed on are sent
        again up to ``attempts`` times and otherwise keep ``reward: None`` and ``error``."""
        if len(items) > self.max_chunk:
            return self._reward_in_turn(items)
        s = self.settings
        deadline = time.monotonic() + s.max_wait
        results = [None] * len(items)
        pending = list(range(len(items)))
        tries_left = s.attempts
        unreachable = [0] * len(s.urls)
        last = ["no request sent"]
        while pending:
            host = self.hosts.acquire(deadline, lambda: last[0])
            url = s.urls[host]
            try:
                status, response, body = self.request(host, "POST", "/v1/reward", {"items": [items[k] for k in pending]})
            except (OSError, http.client.HTTPException) as e:
                unreachable[host] += 1
                last[0] = f"{url}: POST /v1/reward failed: {type(e).__name__}: {e}"
                if min(unreachable) >= s.attempts:
                    raise AfterburnerError(f"afterburner: no server answered after {s.attempts} tries each; last: {last[0]}") from e
                self.hosts.hold(host, min(2.0 ** unreachable[host], 30.0))
                continue
            unreachable[host] = 0
            message = body.get("error") if isinstance(body, dict) else body
            if status == 200:
                answered = body.get("results") if isinstance(body, dict) else None
                if not isinstance(answered, list) or len(answered) != len(pending):
                    raise AfterburnerError(f"afterburner: {url} answered {len(answered or [])} results for {len(pending)} items")
                failed = []
                for k, result in zip(pending, answered):
                    results[k] = result
                    if result.get("reward") is None:
                        failed.append(k)
                tries_left -= 1
                if failed and tries_left > 0:
                    last[0] = f"{url}: the sandbox failed on {len(failed)} items: {answered[pending.index(failed[0])].get('error')}"
                    time.sleep(0.5)
                    pending = failed
                    continue
                pending = []
            elif status == 503:
                wait = _retry_after(response, 1.0)
                last[0] = f"{url}: 503 {message}"
                self.hosts.hold(host, wait)
            elif status == 413 and len(pending) > 1:
                # The server takes fewer programs per request than a chunk: halve and go on.
                self.max_chunk = max(1, min(self.max_chunk, len(pending) // 2))
                sub = [items[k] for k in pending]
                for k, result in zip(pending, self._reward_in_turn(sub)):
                    results[k] = result
                pending = []
            elif 400 <= status < 500:
                raise AfterburnerError(f"afterburner: {url} refused POST /v1/reward with {status}: {message}")
            else:
                unreachable[host] += 1
                last[0] = f"{url}: POST /v1/reward answered {status}: {message}"
                if min(unreachable) >= s.attempts:
                    raise AfterburnerError(f"afterburner: no server answered after {s.attempts} tries each; last: {last[0]}")
                self.hosts.hold(host, min(2.0 ** unreachable[host], 30.0))
        return results

    # -- a batch ------------------------------------------------------------------------------

    def reward(self, items):
        """Results for a whole batch: chunks posted concurrently over the hosts, order kept."""
        if not items:
            return []
        size = self.max_chunk
        chunks = [items[k : k + size] for k in range(0, len(items), size)]
        if len(chunks) == 1:
            return self.reward_chunk(chunks[0])
        results = []
        for part in self.pool.map(self.reward_chunk, chunks):
            results.extend(part)
        return results

    def _reward_in_turn(self, items):
        """Chunks one after another on this thread (pool threads must not wait on the pool)."""
        results = []
        for k in range(0, len(items), self.max_chunk):
            results.extend(self.reward_chunk(items[k : k + self.max_chunk]))
        return results

    def close(self):
        """Stops the threads and closes every connection (a closed client cannot be used)."""
        self.pool.shutdown(wait=True)
        with self._stats_lock:
            for conn in list(self._opened):
                conn.close()


def _retry_after(response, default):
    value = response.getheader("Retry-After")
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return default


# ---------------------------------------------------------------------------------------------
# Shared clients and the asynchronous micro-batcher

_clients = {}
_clients_lock = threading.Lock()


def client_for(settings):
    """The process's client for these settings (one connection pool per set of hosts)."""
    with _clients_lock:
        client = _clients.get(settings)
        if client is None:
            client = _clients[settings] = Client(settings)
        return client


def close_all():
    """Closes the process's shared clients (tests and benchmarks; trainers never need to)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


class _MicroBatcher:
    """Gathers the per-sample calls made on one event loop into ``/v1/reward`` chunks: a chunk
    leaves when it holds ``chunk_size`` items or ``window_ms`` after its first item came."""

    def __init__(self, client, loop):
        self.client = client
        self.loop = loop
        self.pending = []
        self.timer = None

    def submit(self, item):
        future = self.loop.create_future()
        self.pending.append((item, future))
        if len(self.pending) >= self.client.max_chunk:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(self.client.settings.window_ms / 1000.0, self.flush)
        return future

    def flush(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        batch, self.pending = self.pending, []
        if not batch:
            return
        done = self.loop.run_in_executor(self.client.pool, self.client.reward_chunk, [item for item, _ in batch])

        def hand_out(task):
            error = asyncio.CancelledError() if task.cancelled() else task.exception()
            for k, (_, future) in enumerate(batch):
                if future.done():  # the caller was cancelled
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(task.result()[k])

        done.add_done_callback(hand_out)


_batchers = weakref.WeakKeyDictionary()


async def submit_async(settings, item):
    """The server's result for one item, batched with the other calls awaiting on this loop."""
    loop = asyncio.get_running_loop()
    per_loop = _batchers.get(loop)
    if per_loop is None:
        per_loop = _batchers[loop] = {}
    batcher = per_loop.get(settings)
    if batcher is None:
        batcher = per_loop[settings] = _MicroBatcher(client_for(settings), loop)
    return await batcher.submit(item)
