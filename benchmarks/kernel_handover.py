"""How often a kernel started ahead leaves its grading client's first request unread, handed over
while it is still busy warming up (what the grading pool did) or once the warm-up has answered
(what `SubmissionRunner._finish_warm_up` makes it do).

A kernel started ahead is warmed up by a client of its own, which asks it to import the
notebook's modules. The grading client then connects as nbclient does (`wait_for_ready`, which
repeats kernel_info every second until one is answered, then one more kernel_info) and runs a
cell. With ipykernel 7.4 a request that reaches the kernel while it is busy with the warm-up is
now and then never read: the kernel sits idle and the grader waits until its timeout. The two
ways alternate in each loop, so load changes hit both alike; CPU burners load the machine as a
class graded on every core does. Here the grading client connects as soon as the warm-up is
sent, the worst case; in the pool the warm-up has usually finished while the previous submission
ran, so the window is narrower there (about 1 kernel start in 50 to 150 stalled under load).

    python benchmarks/kernel_handover.py              # 3 loops x 40 kernels each way (about 5 minutes)
    python benchmarks/kernel_handover.py --kernels 10 --loops 2
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder.kernel_command import GradingKernelManager  # noqa: E402

WARM_UP = "import numpy, pandas"  # what ex02's kernels import ahead
UNREAD_AFTER = 10  # seconds: an idle kernel answers kernel_info in well under one


async def _reply_to(client, msg_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        reply = await client.shell_channel.get_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply["parent_header"].get("msg_id") == msg_id:
            return reply


async def one_kernel(wait_for_warm_up: bool) -> str:
    """'ok', or 'unread' when a request of the grading client went unanswered for UNREAD_AFTER s."""
    with tempfile.TemporaryDirectory(prefix="cicd-handover-") as scratch:
        km = GradingKernelManager(kernel_name="python3", transport="ipc", ip=f"{scratch}/kernel",
                                  connection_file=f"{scratch}/connection.json")
        await km.start_kernel(extra_arguments=["--HistoryManager.hist_file=:memory:"])
        warm = km.client()
        warm.start_channels()
        client = None
        try:
            warm_id = warm.execute(WARM_UP, silent=True, store_history=False)
            if wait_for_warm_up:
                await _reply_to(warm, warm_id, 120)
                warm.stop_channels()
            client = km.client()
            client.start_channels()
            await client.wait_for_ready(timeout=UNREAD_AFTER)
            await _reply_to(client, client.kernel_info(), UNREAD_AFTER)
            await _reply_to(client, client.execute("x = 1"), 120)
            return "ok"
        except Exception:  # queue.Empty or wait_for_ready's RuntimeError: no answer in time
            return "unread"
        finally:
            for channels in (warm, client):
                if channels is not None:
                    channels.stop_channels()
            await km.shutdown_kernel(now=True)


def loop(kernels: int, results) -> None:
    async def run():
        for _ in range(kernels):
            for wait in (False, True):
                results.put((wait, await one_kernel(wait)))
    asyncio.run(run())


def burn(stop) -> None:
    while not stop.is_set():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernels", type=int, default=40, help="kernels per loop and way (default 40)")
    parser.add_argument("--loops", type=int, default=3, help="loops starting kernels at once (default 3)")
    parser.add_argument("--burners", type=int, default=2, help="CPU-bound processes alongside (default 2)")
    args = parser.parse_args()
    results, stop = multiprocessing.Queue(), multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.burners)]
    loops = [multiprocessing.Process(target=loop, args=(args.kernels, results)) for _ in range(args.loops)]
    started = time.monotonic()
    for process in burners + loops:
        process.start()
    counts = {False: {"ok": 0, "unread": 0}, True: {"ok": 0, "unread": 0}}
    for _ in range(2 * args.kernels * args.loops):
        wait, outcome = results.get()
        counts[wait][outcome] += 1
    stop.set()
    for process in loops + burners:
        process.join()
    print(f"{2 * args.kernels * args.loops} kernels in {time.monotonic() - started:.0f} s, "
          f"{args.loops} at a time, {args.burners} CPU burners")
    for wait, label in ((False, "handed over while warming up"), (True, "handed over once warmed up")):
        c = counts[wait]
        print(f"  {label:30} {c['unread']:3d} of {c['ok'] + c['unread']} left a request unanswered for {UNREAD_AFTER} s")


if __name__ == "__main__":
    main()
