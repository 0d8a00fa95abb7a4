# Afterburner harness: runs one candidate on every test input, in this one process.
# Header: {"mode": "stdio" | "venus" | "call", "source", "prelude", "runner", "placeholder",
#          "class", "name", "count"}; frames: the test inputs (never the expected outputs).
# Per test: {"i", "ns", "st": "ok" | "error" | "input_error", "out", "kind", "err"}.
import builtins
import threading

_IN = "/tmp/.afterburner-stdin"
_OUT = "/tmp/.afterburner-stdout"


def _fresh_globals():
    return {"__name__": "__main__", "__builtins__": builtins, "__doc__": None}


def _join_threads():
    main = threading.main_thread()
    for t in threading.enumerate():
        if t is not main and not t.daemon:
            t.join()


def _flush(*streams):
    for s in streams:
        try:
            s.flush()
        except BaseException:
            pass


def _redirect(path, flags, target):
    """Points file descriptor `target` at `path` (the candidate may have closed it)."""
    fd = os.open(path, flags, 0o600)
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)


def _run_program(code, data, null_out):
    """Runs a whole program on `data` as stdin; returns (status, stdout bytes, ns, error)."""
    with open(_IN, "wb") as f:
        f.write(data)
    _redirect(_IN, os.O_RDONLY, 0)
    _redirect(_OUT, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 1)
    stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "rb", closefd=False)), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), encoding="utf-8")
    sys.stdin = sys.__stdin__ = stdin
    sys.stdout = sys.__stdout__ = stdout
    g = _fresh_globals()
    status, err = "ok", None
    t0 = time.perf_counter_ns()
    try:
        exec(code, g)
        _join_threads()
    except SystemExit as e:
        if e.code is not None and e.code != 0:
            status, err = "error", "exit status " + repr(e.code)
            if isinstance(e.code, str):
                err = e.code
    except BaseException:
        status, err = "error", _trace()
    ns = time.perf_counter_ns() - t0
    try:
        g.clear()
    except BaseException:
        pass
    _flush(sys.stdout, sys.__stdout__, stdout)
    _redirect(os.devnull, os.O_WRONLY, 1)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    sys.stdout = sys.__stdout__ = null_out
    with open(_OUT, "rb") as f:
        out = f.read()
    return status, out, ns, err


def _program_mode(header, frames, ch):
    source = header["source"]
    if header["mode"] == "venus":
        source = header["runner"].replace(header["placeholder"], source)
    prelude = header.get("prelude") or ""
    if prelude:
        source = prelude + "\n" + source
    try:
        code = compile(source, "solution.py", "exec")
    except BaseException:
        ch.emit({"compile_error": _trace()})
        return
    null_out = sys.stdout
    for i, data in enumerate(frames):
        status, out, ns, err = _run_program(code, data, null_out)
        rec = {"i": i, "ns": ns, "st": status, "out": out.decode("utf-8", "replace")}
        if err is not None:
            rec["err"] = err
        ch.emit(rec)


def _call_mode(header, frames, ch):
    g = _fresh_globals()
    prelude = header.get("prelude") or ""
    if prelude:
        try:
            exec(compile(prelude, "prelude.py", "exec"), g)
        except BaseException:
            ch.emit({"prelude_error": _trace()})
            return
    helpers = {k: g[k] for k in ("list_node", "tree_node") if callable(g.get(k))}
    try:
        code = compile(header["source"], "solution.py", "exec")
    except BaseException:
        ch.emit({"compile_error": _trace()})
        return
    try:
        exec(code, g)
    except BaseException:
        ch.emit({"load_error": _trace()})
        return
    cls, name = header.get("class"), header["name"]
    for i, data in enumerate(frames):
        try:
            args, kwargs = _call_args(data.decode("utf-8"), helpers)
        except BaseException:
            ch.emit({"i": i, "ns": 0, "st": "input_error", "err": _trace()})
            continue
        ns, rec = 0, None
        try:
            if cls is None:
                target = g[name]
            else:
                target = getattr(g[cls](), name)
            t0 = time.perf_counter_ns()
            try:
                result = target(*args, **kwargs)
            finally:
                ns = time.perf_counter_ns() - t0
            kind, text = _encode(result)
            rec = {"i": i, "ns": ns, "st": "ok", "out": text, "kind": kind}
        except BaseException:
            rec = {"i": i, "ns": ns, "st": "error", "err": _trace()}
        del args, kwargs
        ch.emit(rec)


def _main():
    header, frames = _read_frames()
    ch = _Channel()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "wb", closefd=False)), encoding="utf-8")
    if header["mode"] in ("stdio", "venus"):
        _program_mode(header, frames, ch)
    else:
        _call_mode(header, frames, ch)
    ch.emit({"done": len(frames)})


_main()
