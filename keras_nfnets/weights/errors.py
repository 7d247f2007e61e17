"""The one error hierarchy of weight loading, and its list formatter.

Every problem with a weights file is a `CheckpointError` (a `ValueError`);
the subclasses say which kind, so callers catch as narrowly as they need:

    CheckpointError
    ├── CorruptCheckpointError       not a readable file of its format
    │   ├── TruncatedCheckpointError     it ends early (interrupted download)
    │   └── NonFiniteWeightsError        NaN or infinite values
    ├── WeightsHashError             a download fails its md5/size/sha256
    ├── DownloadError (also OSError) the server could not be read
    └── WrongArchitectureError       the file does not fit the model
        ├── WrongVariantError            another variant (module count)
        ├── MissingTensorError           the model has a weight it lacks
        ├── UnexpectedTensorError        a tensor the model has no weight for
        └── TensorShapeError             a tensor of another shape

Example:
>>> try:
...     keras_nfnets.NFNetF0(weights="F1_haiku.npz")
... except WrongArchitectureError as e:
...     print(e)
"""


class CheckpointError(ValueError):
    """A weights file is unsafe, corrupt or does not fit the model."""


class CorruptCheckpointError(CheckpointError):
    """The file is not a readable file of its format."""


class TruncatedCheckpointError(CorruptCheckpointError):
    """The file ends before the data its header announces."""


class NonFiniteWeightsError(CorruptCheckpointError):
    """The file holds NaN or infinite values (or float64 values that
    overflow float32)."""


class WeightsHashError(CheckpointError):
    """A downloaded file does not match its published or recorded hash."""


class DownloadError(CheckpointError, OSError):
    """The weights could not be downloaded (also an `OSError`)."""


class WrongArchitectureError(CheckpointError):
    """The file is for another architecture than the model."""


class WrongVariantError(WrongArchitectureError):
    """A checkpoint is for another variant of the model's family."""


class MissingTensorError(WrongArchitectureError):
    """The model has a weight the file lacks."""


class UnexpectedTensorError(WrongArchitectureError):
    """The file has a tensor the model has no weight for."""


class TensorShapeError(WrongArchitectureError):
    """A tensor has another shape than the model's weight."""


def first_n(items, limit=8, sep=", "):
    """`items` joined, the first `limit` of them, then "and N more".

    Example:
    >>> first_n([f"t{i}" for i in range(10)], limit=2)
    't0, t1 and 8 more'
    """
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(str(i) for i in items[:limit]) + more
