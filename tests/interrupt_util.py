"""Timing-free Ctrl-C test helper: does a C kernel poll for signals while it runs?"""
from __future__ import annotations

import os
import signal
import threading
import time

#: A kernel must see the signal in this many of its stop polls (each poll runs the Python
#: signal handlers, csrc/py/common.c) before the handler raises. Signals sent while a kernel
#: that never polls is running coalesce into one handler call after it returns, so such a
#: kernel returns normally and the test fails; no clock is involved.
POLLS = 3


def interrupt_inside(fn, *args) -> int:
    """Calls the C kernel ``fn(*args)`` (a ``samba_ext._core`` function, called directly so
    that no Python code runs between setting ``inside`` and entering C) in the main thread
    while another thread keeps sending SIGINT until the call ends. The handler counts the
    calls made while ``inside`` and raises KeyboardInterrupt at the POLLS-th, which can only
    happen from the kernel's own polls. Returns the handler calls seen."""
    st = {"inside": False, "seen": 0, "stop": False}

    def handler(signum, frame):
        if st["inside"]:
            st["seen"] += 1
            if st["seen"] >= POLLS:
                st["inside"] = False
                raise KeyboardInterrupt

    def sender():
        while not st["stop"]:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.002)    # pacing only; nothing is asserted about time

    old = signal.signal(signal.SIGINT, handler)
    th = threading.Thread(target=sender, daemon=True)
    returned = False
    try:
        th.start()
        try:
            st["inside"] = True
            fn(*args)
            returned = True
        except KeyboardInterrupt:
            pass
        finally:
            st["inside"] = False
            st["stop"] = True
            th.join()
    finally:
        signal.signal(signal.SIGINT, old)
    assert not returned, (f"the kernel ran to completion under repeated SIGINT (handler ran "
                          f"{st['seen']} time(s) while it was inside): it does not poll Ctrl-C")
    return st["seen"]
