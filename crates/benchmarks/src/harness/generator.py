# Afterburner harness: runs a dataset's stress-input generator (seeded) and prints the inputs.
# Header: {"source", "prelude", "seed", "calls": null | [[size, lid, cid, seed], ...], "count": 0}.
# `calls` null: COFFE style, `generate_input()` returns stdin text once. Otherwise ENAMEL style:
# `generate_input(size=, lid=, cid=)` returns the positional arguments, after `random.seed(seed)`.
# Per call: {"i", "st": "ok" | "error", "input", "err"}; an ENAMEL input is the argument list text.
import builtins
import random
import string

if os.environ.get("PYTHONHASHSEED") != "0":
    # Generators that iterate over sets of strings are only reproducible with a fixed hash seed.
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)


# Helpers that ENAMEL generators call from ENAMEL's `enam.datautils` (which the dataset files do
# not contain): written anew here to draw from `random` in the same order as the originals.
def rand_parens(size, valid=True, par="()", sep=""):
    if not valid:
        assert sep == ""
        half = (size + 1) // 2 - 1
        left = rand_parens(size=half, valid=True, par=par)
        return left + par[1] + par[0] + rand_parens(size=half, valid=True, par=par)
    size += size % 2
    groups, depth = [], 0
    for i in range(size):
        if depth == 0 or (depth < size - i and random.randint(0, 1)):
            if depth == 0:
                groups.append([])
            groups[-1].append(par[0])
            depth += 1
        else:
            groups[-1].append(par[1])
            depth -= 1
    groups = ["".join(g) for g in groups]
    return groups if sep is None else sep.join(groups)


def miller_rabin(n, k=5):
    if n in (2, 3):
        return True
    if n == 1 or n % 2 == 0:
        return False
    r, d = 0, n - 1
    while d % 2 == 0:
        r, d = r + 1, d // 2
    for _ in range(k):
        x = pow(random.randint(2, n - 2), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def rand_probably_prime(lb, ub=None):
    if ub is None:
        lb = max(lb, 3)
        lb, ub = lb // 2, lb
    else:
        lb = max(lb, 0)
        ub = max(lb * 2, ub, 3)
    p = random.randint(lb, ub)
    while not miller_rabin(p):
        p = random.randint(lb, ub)
    return p


def rand_primality(size, lid, cid):
    size = max(size, 4)
    fixed = {0: 2 * 3 * 5 * 7 * 11 * 13 + 1, 1: 561, 2: 2, 3: 125}
    if lid == 0 and cid in fixed:
        return fixed[cid]
    if cid % 3 == 0:
        return rand_probably_prime(size)
    m = int(size ** 0.5 + 1)
    if cid % 3 == 1:
        return rand_probably_prime(m) ** 2
    return rand_probably_prime(m) * rand_probably_prime(m)


_HELPERS = {
    "random": random,
    "string": string,
    "math": math,
    "time": time,
    "rand_parens": rand_parens,
    "miller_rabin": miller_rabin,
    "rand_probably_prime": rand_probably_prime,
    "rand_primality": rand_primality,
}


def _scope():
    g = {"__name__": "__generator__", "__builtins__": builtins}
    g.update(_HELPERS)
    return g


def _main():
    header, _ = _read_frames()
    ch = _Channel()
    source, prelude = header["source"], header.get("prelude") or ""
    calls = header.get("calls")
    for i, call in enumerate([None] if calls is None else calls):
        try:
            g = _scope()
            random.seed(header["seed"])
            if prelude:
                exec(compile(prelude, "prelude.py", "exec"), g)
            exec(compile(source, "generator.py", "exec"), g)
            if call is None:
                text = g["generate_input"]()
                if type(text) is not str:
                    raise TypeError("generate_input() returned %s, not str" % type(text).__name__)
            else:
                size, lid, cid, seed = call
                random.seed(seed)
                args = tuple(g["generate_input"](size=size, lid=lid, cid=cid))
                text = repr(_plain(args))[1:-1]
                _call_args(text)
            ch.emit({"i": i, "st": "ok", "input": text})
        except BaseException:
            ch.emit({"i": i, "st": "error", "err": _trace()})
    ch.emit({"done": 0})


_main()
