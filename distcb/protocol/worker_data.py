"""What coordinator callbacks ask of the chief worker, and what it sends back.

The model lives on the workers; a coordinator callback that needs it (TensorBoard's
histograms, graph, profile, projector) declares *worker requests*
(:class:`WorkerRequest`: ``worker_requests()`` of the callback, gathered by the
coordinator into ``Start.worker_requests``). The chief interprets them and
sends what they ask for in ``EpochEnd.extras`` (:class:`EpochExtras`), which
the coordinator hands to its callbacks in ``JobState.epoch_extras``.

Both sides are msgspec Structs: binary data travels as ``bytes`` (MessagePack
bin; JSON encodes it as base64), every list and string is bounded here, and the
decoder refuses an unknown request or field. What a type cannot say (two
lists of one length, a PNG signature, a path that stays under the profile
directory) is checked in ``__post_init__``, which the decoder runs too.
"""

from __future__ import annotations

import posixpath
import sys
from typing import Annotated

import msgspec

from distcb.protocol.bounds import Name, Path, Text
from distcb.protocol.decisions import NonNegInt

MAX_WORKER_REQUESTS = 64
MAX_WEIGHTS = 1 << 16  # weights (or embedding layers) of one model
MAX_BUCKETS = 1024  # buckets of one weight histogram
MAX_IMAGES_PER_WEIGHT = 16
MAX_PROFILE_FILES = 4096
MAX_BLOB_BYTES = 256 * 1024 * 1024  # one file or image (Config.max_message_bytes binds first)
MAX_MODEL_JSON_CHARS = 256 * 1024 * 1024

Positive = Annotated[int, msgspec.Meta(ge=1)]
Finite = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
Blob = Annotated[bytes, msgspec.Meta(max_length=MAX_BLOB_BYTES)]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PROFILE_PREFIX = "plugins/profile/"


# ------------------------------------------------------------------ requests (coordinator -> chief)


class WorkerRequest(msgspec.Struct, frozen=True, tag_field="kind", forbid_unknown_fields=True):
    """Base of what a coordinator callback asks the chief to compute from its model."""


class HistogramRequest(WorkerRequest, frozen=True, tag="histograms"):
    """Weight histograms every `every_epochs` epochs; with `images`, the weights drawn too."""

    every_epochs: Positive
    images: bool = False

    def due(self, epoch: int) -> bool:
        return epoch % self.every_epochs == 0


class ModelJsonRequest(WorkerRequest, frozen=True, tag="model_json"):
    """The model's JSON (``model.to_json()``) at the first epoch (TensorBoard's graph)."""


class ProfileRequest(WorkerRequest, frozen=True, tag="profile"):
    """A profile of global training batches `first_batch..last_batch` (1-based)."""

    first_batch: Positive
    last_batch: Positive

    def __post_init__(self) -> None:
        if self.last_batch < self.first_batch:
            raise ValueError(
                f"last_batch {self.last_batch} is before first_batch {self.first_batch}"
            )


class EmbeddingsRequest(WorkerRequest, frozen=True, tag="embeddings"):
    """The embedding layers' names at the first epoch, and every `every_epochs` epochs the
    weights saved for the projector in `directory` (by the chief: model files are its own)."""

    every_epochs: Positive
    directory: Path

    def due(self, epoch: int) -> bool:
        return epoch % self.every_epochs == 0


AnyWorkerRequest = HistogramRequest | ModelJsonRequest | ProfileRequest | EmbeddingsRequest


# ------------------------------------------------------------------ extras (chief -> coordinator)


class WeightHistogram(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One weight's histogram, in the fields of TensorBoard's ``HistogramProto``.

    ``bucket_limits`` are the right edges of the buckets. The statistics cover the
    finite values only; ``nonfinite`` counts the others; a weight without a finite
    value has no buckets. `sum` and `sum_squares` may overflow to infinity (huge
    weights): a double in the proto too.
    """

    name: Path  # the weight's path (Keras 3) or name (tf_keras)
    min: Finite
    max: Finite
    num: NonNegInt
    sum: float
    sum_squares: float
    bucket_limits: Annotated[tuple[Finite, ...], msgspec.Meta(max_length=MAX_BUCKETS)] = ()
    bucket_counts: Annotated[tuple[NonNegInt, ...], msgspec.Meta(max_length=MAX_BUCKETS)] = ()
    nonfinite: NonNegInt = 0

    def __post_init__(self) -> None:
        if len(self.bucket_limits) != len(self.bucket_counts):
            raise ValueError(
                f"histogram {self.name!r} has {len(self.bucket_limits)} bucket_limits but "
                f"{len(self.bucket_counts)} bucket_counts; they must be as many"
            )

    @property
    def tag(self) -> str:
        """The TensorBoard tag Keras uses for this weight: ``<path>/histogram``."""
        return f"{self.name.replace(':', '_')}/histogram"


class WeightImage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One weight drawn as images: what ``tf.summary.image`` writes for it."""

    name: Path
    width: Positive
    height: Positive
    pngs: Annotated[tuple[Blob, ...], msgspec.Meta(min_length=1, max_length=MAX_IMAGES_PER_WEIGHT)]

    def __post_init__(self) -> None:
        if not all(png.startswith(PNG_SIGNATURE) for png in self.pngs):
            raise ValueError(f"image {self.name!r}: every entry of pngs must be a PNG image")

    @property
    def tag(self) -> str:
        """The TensorBoard tag Keras uses for this weight: ``<path>/image``."""
        return f"{self.name.replace(':', '_')}/image"


class ProfileFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A profiler file, by its path relative to the ``train`` run; it must stay under
    ``plugins/profile/``: a chief cannot make the coordinator write elsewhere."""

    path: Path
    data: Blob

    def __post_init__(self) -> None:
        clean = posixpath.normpath(self.path)
        if (
            clean != self.path
            or not clean.startswith(PROFILE_PREFIX)
            or ".." in clean.split("/")
            or "\\" in clean
        ):
            raise ValueError(
                f"profile file {self.path!r} is not a plain path under {PROFILE_PREFIX}"
            )


class ProfileSummary(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A summary the traced batches wrote (a serialized ``Summary`` proto) and its step."""

    step: NonNegInt
    summary: Blob


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the chief profiled: the files and summaries, or `error` saying why there are none."""

    files: Annotated[tuple[ProfileFile, ...], msgspec.Meta(max_length=MAX_PROFILE_FILES)] = ()
    summaries: Annotated[
        tuple[ProfileSummary, ...], msgspec.Meta(max_length=MAX_PROFILE_FILES)
    ] = ()
    error: Text | None = None


class EpochExtras(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """What a worker sends its coordinator's callbacks with an epoch end (the chief only).

    Attributes:
        iterations: the optimizer's step count (TensorBoard's
            ``evaluation_<metric>_vs_iterations`` step).
        histograms, images: the weights, when a `HistogramRequest` is due.
        model_json: the model's JSON at the first epoch (`ModelJsonRequest`).
        embedding_layers: the embedding layers' names at the first epoch (`EmbeddingsRequest`).
        profile: once the profiled batches are done (`ProfileRequest`).
    """

    iterations: NonNegInt | None = None
    histograms: Annotated[tuple[WeightHistogram, ...], msgspec.Meta(max_length=MAX_WEIGHTS)] = ()
    images: Annotated[tuple[WeightImage, ...], msgspec.Meta(max_length=MAX_WEIGHTS)] = ()
    model_json: Annotated[str, msgspec.Meta(max_length=MAX_MODEL_JSON_CHARS)] | None = None
    embedding_layers: Annotated[tuple[Name, ...], msgspec.Meta(max_length=MAX_WEIGHTS)] | None = (
        None
    )
    profile: Profile | None = None


NO_EXTRAS = EpochExtras()
