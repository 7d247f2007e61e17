"""Builds timm reference models in a process of their own (PyTorch and
TensorFlow in one process can crash on import): random weights with
perturbed gains, biases and skip gains, saved with
`safetensors.torch.save_file`, and timm's logits on random inputs.

    python tests/timm_reference.py OUT_DIR SPECS_JSON

Each spec: `key`, and `name` (a timm model) or `cfg` (`NfCfg` fields for a
custom `NormFreeNet`); optional `kwargs`, `seed`, `size`, `batch`,
`deepmind_numerics` (tanh GELU and no additive eps: the model DeepMind
trained), `meta` (only count parameters, on the meta device). Writes
`OUT_DIR/<key>.safetensors` and `OUT_DIR/<key>.npz` (`inputs` NHWC,
`logits`, `params`), or for `meta` specs only `params` in `<key>.npz`.
"""

import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
import timm
from safetensors.torch import save_file
from timm.models.nfnet import GammaAct, NfCfg, NormFreeNet


def _build(spec, device=None):
    kwargs = dict(spec.get("kwargs", {}))
    if device is not None:
        kwargs["device"] = device
    if "cfg" in spec:
        return NormFreeNet(NfCfg(**spec["cfg"]), **kwargs)
    return timm.create_model(spec["name"], **kwargs)


def _tanh_gelu(x, inplace=False):
    del inplace
    return F.gelu(x, approximate="tanh")


def _perturb(model, generator):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain"):
                p.fill_(0.2 + 0.8 * float(torch.rand((), generator=generator)))
            elif name.endswith(".gain"):
                p.copy_(0.5 + torch.rand(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            elif ".attn" in name and name.endswith(".conv.weight"):
                p.copy_(0.5 * torch.randn(p.shape, generator=generator))


def make(spec, out_dir):
    key = spec["key"]
    if spec.get("meta"):
        model = _build(spec, device="meta")
        params = sum(p.numel() for p in model.parameters())
        np.savez(os.path.join(out_dir, key + ".npz"), params=params)
        return
    generator = torch.Generator().manual_seed(spec.get("seed", 0))
    torch.manual_seed(spec.get("seed", 0))
    model = _build(spec).eval()
    _perturb(model, generator)
    if spec.get("deepmind_numerics"):
        for module in model.modules():
            if isinstance(module, GammaAct):
                module.act_fn = _tanh_gelu
            if hasattr(module, "eps") and hasattr(module, "gain"):
                # No additive eps (batch_norm refuses 0; 1e-30 vanishes
                # next to any weight variance in float32).
                module.eps = 1e-30
    size = spec.get("size", 64)
    x = torch.randn(spec.get("batch", 2), 3, size, size, generator=generator)
    with torch.no_grad():
        logits = model(x).numpy()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              os.path.join(out_dir, key + ".safetensors"))
    np.savez(os.path.join(out_dir, key + ".npz"),
             inputs=x.permute(0, 2, 3, 1).numpy(), logits=logits,
             params=sum(p.numel() for p in model.parameters()))


def main(out_dir, specs):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for spec in json.loads(specs):
        make(spec, out_dir)


if __name__ == "__main__":
    main(*sys.argv[1:])
