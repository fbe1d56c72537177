"""How many torch operations a call dispatches: a speed regression check that does not time.

Eager torch pays a dispatch (a few µs, and one node in the autograd graph) for every array
operation, whatever its size; on the small images of a coarse pyramid level that cost is most
of the run (issue 13.5). Counting the operations a kernel dispatches catches a formulation that
falls back to one operation per axis, component or stencil entry, and does not depend on the
machine's load.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest


def count_ops(call: Callable[[], object]) -> Counter:
    """The aten operations ``call()`` dispatches, by name (forward and backward)."""
    pytest.importorskip("torch")
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    with _Count() as mode:
        call()
    return mode.ops
