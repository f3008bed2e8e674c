"""voip/heap.py: what is alive at start-up is left out of garbage collections, and what
is allocated later is still collected. In a process of its own: a frozen heap is never
freed, and this test process builds and drops nodes."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_settle_freezes_the_start_up_heap_and_later_garbage_is_still_collected() -> None:
    script = textwrap.dedent(
        """
        import gc, weakref
        from voip import app, heap  # a node's libraries, imported as at start-up
        heap.settle()
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()

        class Cycle:
            pass

        later = Cycle()
        later.me = later  # garbage only the cyclic collector frees
        gone = weakref.ref(later)
        del later
        gc.collect()
        assert gone() is None
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
