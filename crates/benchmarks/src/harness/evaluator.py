# Afterburner harness: runs a dataset's own judge on (input, expected, actual) triples, in a
# process separate from the candidate (which never sees the expected outputs).
# Header: {"kind": "venus" | "check", "source", "prelude", "count"};
# frames: JSON [input, expected, actual]; per case: {"i", "ok", "err"}.
import builtins


def _main():
    header, frames = _read_frames()
    ch = _Channel()
    kind = header["kind"]
    g = {"__name__": "__evaluator__", "__builtins__": builtins}
    try:
        prelude = header.get("prelude") or ""
        if prelude:
            exec(compile(prelude, "prelude.py", "exec"), g)
        exec(compile(header["source"], "evaluator.py", "exec"), g)
        judge = g["evaluate"] if kind == "venus" else g["__check"]
    except BaseException:
        ch.emit({"setup_error": _trace()})
        return
    for i, frame in enumerate(frames):
        rec = {"i": i, "ok": False}
        try:
            given, expected, actual = json.loads(frame.decode("utf-8"))
            if kind == "venus":
                ok = judge(expected, actual)
            else:
                args, _ = _call_args(given)
                answer = _literal(expected)
                try:
                    output = _literal(actual)
                except Exception:
                    raise ValueError("the output is not a plain Python value: " + actual[:200])
                ok = judge(tuple(args), answer, output)
            rec["ok"] = ok is True or (type(ok) in (bool, int) and bool(ok))
        except BaseException:
            rec["err"] = _trace()
        ch.emit(rec)
    ch.emit({"done": len(frames)})


_main()
