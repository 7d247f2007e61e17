"""Process-level memory settings for training on CPU.

`use_lean_cpu_allocator()` trades CPU training speed for peak memory: freed
tensors go straight back to the operating system instead of staying in
TensorFlow's oneDNN memory pool (a best-fit pool that grows in doubling
regions and never shrinks) or in glibc's per-thread heaps.

The measured trade (speed and peak memory with each allocator) is in the
README's performance table, rendered from `benchmarks/results.json`.

The lean allocator is slower because every large tensor is a fresh `mmap`
whose pages the kernel has to fault in and zero on every step.
"""

import ctypes
import ctypes.util
import os
import warnings

from keras_nfnets import optional

# glibc mallopt() parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

#: The environment variable that makes TensorFlow's oneDNN CPU allocator
#: use the system allocator (read once, when TensorFlow creates it).
TF_SYSTEM_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"


def _tensorflow_started():
    """True once TensorFlow's runtime (and so its CPU allocator) exists."""
    from keras_nfnets import compat  # pylint: disable=import-outside-toplevel
    return compat.tensorflow_started()


def use_lean_cpu_allocator(mmap_threshold=128 * 1024, arena_max=2):
    """Returns freed memory to the OS at once: lower peak RSS, slower steps.

    * TensorFlow: sets `TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`, so tensors are
      allocated with `malloc` rather than kept in oneDNN's pool.
    * glibc (Linux): `mallopt` so that every allocation of `mmap_threshold`
      bytes or more is its own `mmap` (unmapped when freed), and at most
      `arena_max` heaps hold the small ones.

    Call it at the start of the program, before the first model, tensor or
    `tf.distribute` strategy is created: TensorFlow reads the setting once.
    It applies to the whole process. The training program's
    `--lean_cpu_allocator` flag and the benchmark's `--allocator lean` call
    it.

    Args:
        mmap_threshold: allocations of at least this many bytes are mapped
            individually (glibc's default grows up to 32 MB).
        arena_max: the number of glibc heaps (default 8 per core).

    Returns:
        A dict of what was applied (`tensorflow`, `glibc`).

    Raises:
        RuntimeError: TensorFlow's runtime has already started.
        MissingDependencyError: TensorFlow is not installed (an
            `ImportError` naming the `[tensorflow]` extra).

    Example:
    ```python
    import keras_nfnets
    keras_nfnets.use_lean_cpu_allocator()   # first thing in the program
    model = keras_nfnets.NFNetF0(weights=None)
    ```
    """
    optional.require("tensorflow", "use_lean_cpu_allocator()")
    if _tensorflow_started():
        raise RuntimeError(
            "use_lean_cpu_allocator() must be called before TensorFlow "
            "creates its first tensor (TensorFlow's runtime has already "
            "started, so its CPU allocator is fixed). Call it at the start "
            "of the program, before building a model.")
    os.environ[TF_SYSTEM_ALLOCATOR_ENV] = "1"
    applied = {"tensorflow": True, "glibc": False}
    libc_name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        warnings.warn("use_lean_cpu_allocator: this C library has no "
                      "mallopt (not glibc); only the TensorFlow setting "
                      "was applied.", stacklevel=2)
        return applied
    ok = (mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
          and mallopt(_M_ARENA_MAX, int(arena_max)) == 1)
    if not ok:
        warnings.warn("use_lean_cpu_allocator: mallopt refused the "
                      "settings; only the TensorFlow setting was applied.",
                      stacklevel=2)
    applied["glibc"] = ok
    return applied
