"""Size bounds that belong to the protocol itself, shared by every message module."""

from __future__ import annotations

from typing import Annotated

import msgspec

MAX_NAME_CHARS = 256
MAX_PATH_CHARS = 4096
MAX_TEXT_CHARS = 64 * 1024
MAX_TRACEBACK_CHARS = 256 * 1024
MAX_METRICS = 1024

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Path = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PATH_CHARS)]
