"""Start one moto server on 127.0.0.1, print its port, and live exactly as long
as the parent keeps our stdin open. The test harness holds the pipe; when the
test process exits (even by a crash) the pipe closes and this process ends, so
no moto outlives its tests."""

import ctypes
import os
import signal
import sys

from moto.moto_server.threaded_moto_server import ThreadedMotoServer


def die_with_parent() -> None:
    """Belt and braces for the stdin pipe: a stopped (SIGSTOP) server cannot
    read EOF, but the kernel still delivers SIGKILL when the parent dies."""
    parent = os.getppid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:
        sys.exit(0)


def main() -> None:
    die_with_parent()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(port, flush=True)
    try:
        while sys.stdin.read(4096):
            pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
