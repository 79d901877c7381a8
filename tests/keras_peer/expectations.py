"""What the Keras peer run expects of distcb's callbacks, test by test.

Every test of the modules below passes against distcb's callbacks unless it is
listed here. test_keras_peer.py fails when a test that should pass does not (a
new difference), when a listed difference passes after all (a stale entry),
and when an entry names no test of the run.

Test ids are ``<module file>::<class>::<test>`` (Keras names the RemoteMonitor
tests' class ``TerminateOnNaNTest``).
"""

from __future__ import annotations

# Keras 3's callback test modules (site-packages/keras/src/callbacks/<name>_test.py).
# tf_keras 2.21 ships no callback tests (no callbacks_test.py in its wheel), so there is
# nothing of tf_keras's to run; tests/callbacks/test_plain_fit.py runs distcb's callbacks
# in tf_keras's fit against tf_keras's own instead.
KERAS_TEST_MODULES = (
    "csv_logger",
    "early_stopping",
    "lambda_callback",
    "learning_rate_scheduler",
    "model_checkpoint",
    "reduce_lr_on_plateau",
    "remote_monitor",
    "tensorboard",
    "terminate_on_nan",
)

_REMOTE = "remote_monitor_test.py::TerminateOnNaNTest::"
_MOCKS_REQUESTS = (
    "mocks requests.post, which distcb does not call: it posts with aiohttp off the training "
    "thread. The same behaviour is checked against a real aiohttp server by "
)

# Tests that cannot apply to distcb, skipped with the reason; each says which of distcb's
# own tests covers the behaviour instead.
NOT_APPLICABLE: dict[str, str] = {
    _REMOTE + "test_RemoteMonitor": (
        "expects warnings.warn('Could not reach RemoteMonitor root server') from a synchronous "
        "post. distcb never blocks a hook on the network: it logs the failure, with its cause, "
        "once per kind (tests/sinks/test_sink_remote_monitor.py::"
        "test_server_down_is_reported_once and ::test_runs_without_any_event_loop)."
    ),
    _REMOTE + "test_RemoteMonitor_np_array": _MOCKS_REQUESTS
    + "tests/sinks/test_sink_remote_monitor.py::test_payload_is_what_keras_sends (a "
    "one-element array, the body compared byte for byte with Keras's own post).",
    _REMOTE + "test_RemoteMonitor_np_float32": _MOCKS_REQUESTS
    + "tests/sinks/test_sink_remote_monitor.py::test_payload_is_what_keras_sends (float32 "
    "values, the body compared byte for byte with Keras's own post).",
    _REMOTE + "test_RemoteMonitorWithJsonPayload": _MOCKS_REQUESTS
    + "tests/callbacks/test_plain_fit.py::test_remote_monitor_posts_what_keras_posts (send_as_json "
    "from a real model.fit, compared with Keras's own RemoteMonitor in the same fit).",
}

# Tests distcb fails on purpose: a deliberate deviation from Keras, with the reason.
#
# None at present. Decisions that could have been differences and are not:
# - mode="unknown" (ModelCheckpoint, EarlyStopping, ReduceLROnPlateau): distcb raised a
#   ValueError before; it now warns and falls back to "auto" as Keras 2 and 3 do (a mode
#   that is not a string is still a TypeError). Raising would also have stopped
#   test_model_checkpoint_options at its case 6 and hidden its cases 8 to 15.
EXPECTED_DIFFERENCES: dict[str, str] = {}
