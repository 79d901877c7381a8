# harness/ holds the peer run's own conftest (the top-level `conftest` Keras's tests import);
# it belongs to the subprocess that test_keras_peer.py starts, not to this session.
collect_ignore = ["harness"]
