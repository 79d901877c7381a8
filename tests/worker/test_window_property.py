"""Property: whatever the workers' speeds and the callbacks' decisions, the window rule holds.

Random jobs run through `distcb.testing.simulate`, so the real coordinator and
the real worker code (`distcb.worker`) are under test; only the models are
scripted. For every job:

* every worker applies every decision at the same point (epoch, step);
* no worker begins a step beyond the window of what it knew was processed;
* no decision is lost or applied twice.
"""

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distcb.callbacks import Callback
from distcb.protocol.config import Config
from distcb.testing import simulate


class Scripted(Callback):
    """Makes the decisions of a plan: {(epoch, step): action} from batch hooks, plus an
    LR change at some epoch ends."""

    def __init__(self, batch_plan, epoch_plan):
        super().__init__()
        self.batch_plan = batch_plan
        self.epoch_plan = epoch_plan
        self.epoch = 0
        self.handles = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        action = self.batch_plan.get((self.epoch, batch))
        if action == "stop":
            self.model.stop_training = True
        elif action == "lr":
            self.model.optimizer.learning_rate = 0.1 + batch
        elif action == "snapshot":
            self.handles.append(self.model.get_weights())
        elif action == "restore" and self.handles:
            self.model.set_weights(self.handles[-1])

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.epoch_plan:
            self.model.optimizer.learning_rate = 1.0 + epoch


@st.composite
def jobs(draw):
    workers = draw(st.integers(1, 4))
    epochs = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 16))
    window = draw(st.integers(1, 6))
    speeds = draw(st.lists(st.integers(0, 6), min_size=workers, max_size=workers))
    points = st.tuples(st.integers(0, epochs - 1), st.integers(0, steps - 1))
    actions = st.sampled_from(["stop", "lr", "snapshot", "restore"])
    batch_plan = draw(st.dictionaries(points, actions, max_size=6))
    epoch_plan = draw(st.sets(st.integers(0, epochs - 1), max_size=2))
    return workers, epochs, steps, window, speeds, batch_plan, epoch_plan


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs())
def test_every_worker_applies_every_decision_at_the_same_step(job):
    workers, epochs, steps, window, speeds, batch_plan, epoch_plan = job
    config = Config(
        heartbeat_interval_s=0.5, heartbeat_timeout_s=10, stop_timeout_s=10, window_steps=window
    )
    result = simulate(
        [Scripted(batch_plan, epoch_plan)],
        epoch_logs=[[{"loss": 1.0}] * workers for _ in range(epochs)],
        batch_logs=[[[{"loss": float(s)}] * workers for s in range(steps)] for _ in range(epochs)],
        weights=[f"w{e}" for e in range(epochs)],
        config=config,
        yields_per_step=speeds,
    )
    made = Counter(result.decisions)
    points = None
    for worker in result.workers:
        applied = [(a.decision, a.epoch, a.step) for a in worker.applied]
        # Not lost, not applied twice.
        assert Counter(d for d, _, _ in applied) == made
        # The same point on every worker.
        if points is None:
            points = applied
        assert sorted(applied, key=repr) == sorted(points, key=repr)
        # No step begun beyond the window.
        for begun in worker.steps_begun:
            assert begun.window_steps == window
            assert begun.step <= begun.processed_known + window
    # Every worker ran the same steps.
    ran = {tuple(w.steps_sent) for w in result.workers}
    assert len(ran) == 1
