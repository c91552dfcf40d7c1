"""Two (or more) gloo processes on the loopback interface, for the distributed tests.

Each rank's worker must end with :func:`leave` after ``destroy_process_group()``: gloo's
threads can abort a finished rank at interpreter teardown ("terminate called without an
active exception"), failing a successful run about one time in five under load.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import Any, Callable

import pytest
import torch.multiprocessing as mp


def loopback_ifname() -> dict[str, str]:
    """Keep gloo on the loopback interface (it would otherwise pick the hostname's)."""
    names = [name for _, name in socket.if_nameindex() if name.startswith("lo")]
    return {"GLOO_SOCKET_IFNAME": names[0]} if names else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous(port: int) -> None:
    """The environment a rank needs before ``init_process_group("gloo", ...)``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(loopback_ifname())


def leave() -> None:
    """End a finished rank without the interpreter's teardown (see the module docstring)."""
    sys.stdout.flush()
    os._exit(0)


def run_ranks(worker: Callable[..., None], args: tuple[Any, ...], world: int,
              timeout_s: float) -> None:
    """Run ``worker(rank, *args)`` on ``world`` spawned processes; a rank's exception fails
    the test with its traceback, and a hung collective fails it after ``timeout_s``."""
    ctx = mp.start_processes(worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):  # raises ProcessRaisedException with the traceback
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} ranks did not finish within {timeout_s} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
