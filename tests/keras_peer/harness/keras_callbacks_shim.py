"""What Keras's callback tests get instead of ``keras.src.callbacks``: distcb's classes.

Every name ``keras.src.callbacks`` exports is here. Those distcb implements are
distcb's; the others stay Keras's because they are not under test:
``CallbackList`` is the harness that plain ``fit`` itself uses to call the
callbacks, ``BackupAndRestore``, ``MonitorCallback``, ``OrbaxCheckpoint`` and
``SwapEMAWeights`` have no distcb counterpart (a TerminateOnNaN test uses
Keras's BackupAndRestore as a bystander).
"""

from __future__ import annotations

import keras.src.callbacks as _keras_callbacks

import distcb.callbacks as _distcb_callbacks

# Names that stay Keras's even though distcb has a class of that name.
KEEP_KERAS = frozenset({"CallbackList"})

REPLACED: dict[str, type] = {}
_names = [name for name in dir(_keras_callbacks) if name[:1].isupper()]
for _name in _names:
    _value = getattr(_keras_callbacks, _name)
    if _name not in KEEP_KERAS and _name in _distcb_callbacks.__all__:
        _value = getattr(_distcb_callbacks, _name)
        REPLACED[_name] = _value
    globals()[_name] = _value

__all__ = sorted(_names)
