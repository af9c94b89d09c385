"""A small regex sampler for JSON Schema ``pattern``: a walk over the ``sre_parse`` tree with
bounded repeats. Deterministic for a given rng state."""

from __future__ import annotations

import random
import re
import string

try:  # Python ≥ 3.11 moved the regex parser; the old names warn
    from re import _constants as sre_constants  # type: ignore[attr-defined]
    from re import _parser as sre_parse  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants
    import sre_parse


def sample_regex(pattern: str, rng: random.Random, max_repeat: int = 6) -> str | None:
    """A string matching ``pattern`` (re.search semantics), or None if the pattern is unsupported."""
    try:
        tree = sre_parse.parse(pattern)
    except Exception:  # noqa: BLE001 - an invalid pattern: no sample
        return None

    def gen(items) -> str:
        out = []
        for op, av in items:
            if op == sre_constants.LITERAL:
                out.append(chr(av))
            elif op == sre_constants.NOT_LITERAL:
                out.append(rng.choice([c for c in string.ascii_letters if ord(c) != av]))
            elif op == sre_constants.ANY:
                out.append(rng.choice(string.ascii_lowercase))
            elif op == sre_constants.IN:
                out.append(gen_in(av))
            elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
                lo, hi, sub = av
                hi = min(hi, lo + max_repeat) if hi != sre_constants.MAXREPEAT else lo + rng.randint(0, 3)
                out.extend(gen(sub) for _ in range(rng.randint(lo, max(lo, hi))))
            elif op == sre_constants.SUBPATTERN:
                out.append(gen(av[-1]))
            elif op == sre_constants.BRANCH:
                out.append(gen(rng.choice(av[1])))
            elif op in (sre_constants.AT,):
                continue
            elif op == sre_constants.CATEGORY:
                out.append(gen_cat(av))
            else:
                raise ValueError(op)
        return "".join(out)

    def gen_cat(cat) -> str:
        if cat == sre_constants.CATEGORY_DIGIT:
            return rng.choice(string.digits)
        if cat == sre_constants.CATEGORY_SPACE:
            return " "
        if cat == sre_constants.CATEGORY_WORD:
            return rng.choice(string.ascii_letters + string.digits)
        return rng.choice(string.ascii_letters)

    def gen_in(items) -> str:
        choices: list[str] = []
        negate = False
        for op, av in items:
            if op == sre_constants.NEGATE:
                negate = True
            elif op == sre_constants.LITERAL:
                choices.append(chr(av))
            elif op == sre_constants.RANGE:
                lo, hi = av
                choices.extend(chr(c) for c in range(lo, min(hi, lo + 200) + 1))
            elif op == sre_constants.CATEGORY:
                if av == sre_constants.CATEGORY_DIGIT:
                    choices.extend(string.digits)
                elif av == sre_constants.CATEGORY_WORD:
                    choices.extend(string.ascii_letters + string.digits + "_")
                elif av == sre_constants.CATEGORY_SPACE:
                    choices.append(" ")
        if negate:
            pool = [c for c in string.ascii_letters + string.digits if c not in choices]
            return rng.choice(pool or ["x"])
        return rng.choice(choices or ["x"])

    try:
        for _ in range(10):
            s = gen(tree)
            if re.search(pattern, s):
                return s
    except Exception:  # noqa: BLE001
        return None
    return None
