"""A worker that never trains: says who it is, then exits with code 3 when its rank is the
first argument, else sleeps (a worker for the launcher's signal and failure tests)."""

import os
import sys
import time

rank = int(os.environ["DISTCB_RANK"])
print(
    f"pid {os.getpid()} rank {rank} local {os.environ['DISTCB_LOCAL_RANK']} "
    f"node {os.environ['DISTCB_NODE_RANK']} world {os.environ['DISTCB_WORLD_SIZE']}",
    flush=True,
)
if len(sys.argv) > 1 and rank == int(sys.argv[1]):
    sys.exit(3)
time.sleep(600)
