"""Optional dependencies, imported only on the path that needs them.

The core install (`pip install keras_nfnets`) is what every Keras backend
needs: Keras, NumPy, safetensors, h5py. TensorFlow and the training
program's libraries come with extras (README, Install). A feature that
needs one of them calls `require` on its own path; when the module is
missing the user gets a `MissingDependencyError` that names the feature and
the extra to install, never an `ImportError` from deep inside.

Example:
```python
from keras_nfnets import optional
tf = optional.require("tensorflow", "SavedModel export")
```
"""

import importlib

#: module -> the extra of keras_nfnets that installs it.
EXTRA_FOR = {
    "tensorflow": "tensorflow",
    "tensorflow_datasets": "train",
    "absl": "train",
    "tensorboard": "train",
    "huggingface_hub": "hub",
    "keras_hub": "hub",
}


class MissingDependencyError(ImportError):
    """A feature needs a package that is not installed; the message names
    the `pip install` that brings it."""


def install_hint(module):
    """The pip command that brings `module` (its extra, else the module)."""
    extra = EXTRA_FOR.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    return f"pip install 'keras_nfnets[{extra}]'"


def require(module, feature):
    """Imports and returns `module`, or raises `MissingDependencyError`
    saying that `feature` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        root = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != root:
            raise  # the module is there but one of its own imports failed
        raise MissingDependencyError(
            f"{feature} needs {root}, which is not installed in this "
            f"environment: {install_hint(root)}") from e
