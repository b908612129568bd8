"""Shared by the codec tests: facts about the built extension."""
import re

import actors


def discover_max_depth() -> int:
    """The codec's nesting limit, as the built extension reports it in its too-deep error."""
    x = []
    for _ in range(100_000):
        x = [x]
    try:
        actors.dumps(x)
    except actors.SerializationError as exc:
        found = re.search(r"it is nested more than (\d+) levels deep", str(exc))
        if found:
            return int(found.group(1))
        raise
    raise AssertionError("100,000 levels of nesting encoded: the codec has no nesting limit")


MAX_DEPTH = discover_max_depth()     # MAX_DEPTH in _fastser/_format.pxi; test_max_depth_constant checks both agree
