"""Run a command (``make test``) several times in a row while busy loops occupy every core.

``make test-under-load`` uses it: the signal, kill and resume tests must wait on events, not on time, so
they pass on a machine someone else is using. The hogs are this script's children and die with it: they
are killed when it ends (success, failure, Ctrl-C, SIGTERM) and, should it be killed outright, the kernel
kills them too (``PR_SET_PDEATHSIG``).

    python tests/under_load.py --runs 3 --hogs 2 -- make test
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
HOG = "while True: pass"


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C, so the hogs are stopped in `finally`


def start_hogs(count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen([sys.executable, "-c", HOG], preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL)
        for _ in range(count)
    ]


def stop_hogs(hogs: list[subprocess.Popen[bytes]]) -> None:
    for hog in hogs:
        if hog.poll() is None:
            hog.kill()
    for hog in hogs:
        hog.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="how many times to run the command (default 3)")
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 1, help="busy loops (default: one per core)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.runs < 1 or args.hogs < 0:
        parser.error("give --runs >= 1, --hogs >= 0 and a command after --")
    signal.signal(signal.SIGTERM, _interrupt)
    hogs = start_hogs(args.hogs)
    print(f"under load: {args.hogs} busy loops (pids {[h.pid for h in hogs]}); {args.runs} runs of {command}")
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            code = subprocess.call(command)
            minutes = (time.monotonic() - started) / 60
            print(f"under load: run {run}/{args.runs} exited {code} after {minutes:.1f} min", flush=True)
            if code:
                return code
    except KeyboardInterrupt:
        return 130
    finally:
        stop_hogs(hogs)
    print(f"under load: all {args.runs} runs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
