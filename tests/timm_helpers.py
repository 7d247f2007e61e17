"""Runs `timm_reference.py` in a subprocess and reads what it wrote."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from keras_nfnets import variants

SCRIPT = pathlib.Path(__file__).with_name("timm_reference.py")

# A tiny ECA-NFNet in both vocabularies (timm's NfCfg, this package's
# NFNetConfig): L-family switches at F0-like depth 1 per stage.
TINY_ECA_TIMM = dict(depths=[1, 1, 1, 1], channels=[32, 64, 96, 128],
                     stem_type="deep_quad", stem_chs=16, group_size=8,
                     bottle_ratio=0.25, extra_conv=True, num_features=192,
                     act_layer="silu", attn_layer="eca", attn_kwargs={})
TINY_ECA = variants.NFNetConfig(
    width=(32, 64, 96, 128), depth=(1, 1, 1, 1), group_width=(8,) * 4,
    expansion=(0.25,) * 4, se_ratio=0.25, activation="silu",
    final_conv_mult=1.5, attention="eca", se_divisor=8, ch_div=8,
    skip_gain=False, stem_width=16, numerics="timm", train_imsize=32,
    test_imsize=40, drop_rate=0.0, stochdepth_rate=0.0)


def timm_references(out_dir, specs, timeout=1200):
    """`{key: {"inputs", "logits", "params", "path"}}` for `specs` (see
    timm_reference.py), built by timm in a fresh process. Skips without
    timm, torch or safetensors."""
    for module in ("timm", "torch", "safetensors"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (test extras)")
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out_dir), json.dumps(specs)],
        capture_output=True, text=True, timeout=timeout, env=env,
        check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    refs = {}
    for spec in specs:
        with np.load(out_dir / (spec["key"] + ".npz")) as data:
            ref = {k: data[k] for k in data.files}
        ref["params"] = int(ref["params"])
        ref["path"] = out_dir / (spec["key"] + ".safetensors")
        refs[spec["key"]] = ref
    return refs


def timm_pretrained_cfgs(names, timeout=600):
    """`{name: timm's pretrained_cfg as a dict}`, read in a fresh process."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (test extras)")
    code = ("import json, sys, timm\n"
            "print(json.dumps({n: timm.models.get_pretrained_cfg(n).to_dict()"
            " for n in sys.argv[1:]}))")
    proc = subprocess.run([sys.executable, "-c", code, *names],
                          capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def keras_state(model):
    """`model`'s weights as a timm state dict (`{timm key: array}` in
    PyTorch layout): the inverse of the name rule's transposes, to write
    test files in timm's format."""
    from keras_nfnets.weights import timm  # pylint: disable=import-outside-toplevel
    state = {}
    for key, (_, var, shape) in timm.timm_targets(model).items():
        value = np.asarray(var)
        if value.ndim == 4:  # HWIO -> OIHW
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 3:  # ECA (k, 1, 1) -> (1, 1, k)
            value = value.transpose(2, 1, 0)
        elif value.ndim == 2:  # Dense (in, out) -> (out, in[, 1, 1])
            value = value.T
        state[key] = np.array(value.reshape(shape), "float32", order="C")
    return state
