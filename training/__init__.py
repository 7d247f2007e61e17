"""The NFNet training program (TensorFlow input pipeline; any backend).

From a clone: `python -m training.train` / `python -m training.evaluate`.
Installed from the wheel, this folder is the package `keras_nfnets.training`
(run it with `keras-nfnets-train`, `keras-nfnets-evaluate` or
`python -m keras_nfnets.train`), so modules here import each other
relatively (`from . import data`), never as `training.*`.
"""
