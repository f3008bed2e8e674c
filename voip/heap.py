"""The garbage collector, set for a long-running server.

Python's cyclic collector looks at every tracked object in a full collection: the whole
of the imported libraries (Starlette, pydantic, h2, redis-py, ...) that live as long as
the process. A node allocates on every request, so full collections come every few
thousand requests, and they were 13 % of a node's CPU under status load (py-spy,
docs/benchmarks.md). Frozen once at start-up, what is there by then is left out of every
collection; what requests allocate is collected as before.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then freeze what is left: call it once, when everything is imported
    and before the server takes requests; never in a process that builds and drops nodes
    (a test run), where what is frozen is never freed."""
    gc.collect()
    gc.freeze()
