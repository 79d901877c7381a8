"""A worker that never trains: says who it is, then exits with code 3 when its rank is the
first argument, else sleeps (a worker for the launcher's signal and failure tests). On
SIGTERM it says so and exits 143, as a worker that stops gracefully does."""

import os
import signal
import sys
import time


def stop(signum, frame):
    print(f"rank {os.environ['DISTCB_RANK']} got {signal.Signals(signum).name}", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, stop)

rank = int(os.environ["DISTCB_RANK"])
print(
    f"pid {os.getpid()} rank {rank} local {os.environ['DISTCB_LOCAL_RANK']} "
    f"node {os.environ['DISTCB_NODE_RANK']} world {os.environ['DISTCB_WORLD_SIZE']}",
    flush=True,
)
if len(sys.argv) > 1 and rank == int(sys.argv[1]):
    sys.exit(3)
time.sleep(600)
