import json
import os

import pytest


@pytest.fixture
def read_reports():
    def read(run_dir, num_workers):
        out = []
        for rank in range(num_workers):
            with open(os.path.join(run_dir, f"rank-{rank}.json")) as handle:
                out.append(json.load(handle))
        return out

    return read
