"""FLOP counting against DeepMind's published multiply-add counts (NFNet-F0)
and hand counts written out here from the papers' architecture description
(NF-ResNet-50, NF-RegNet-B0), independent of the model code."""

import keras_nfnets
from keras_nfnets.flops import count_flops, count_macs


def test_f0_multiply_adds_match_deepmind_table():
    # DeepMind's table: NFNet-F0 12.38 G multiply-adds at 256px.
    model = keras_nfnets.NFNetF0()
    assert abs(count_macs(model) / 1e9 - 12.38) < 0.01
    assert count_flops(model) == 2 * count_macs(model)


def _conv(h, w, k, cin, cout, groups=1):
    """Multiply-adds of a SAME conv producing an h x w output."""
    return h * w * k * k * (cin // groups) * cout


def _nf_resnet50_hand_count(size=224, classes=1000):
    """ResNet-50's convolutions (stem 7x7/2 of 64 channels, 3x3/2 max-pool,
    bottlenecks of ratio 0.25 with the stride on the 3x3, a 1x1 projection
    shortcut of the stride), no squeeze-excite, then the classifier."""
    h = size // 2
    total = _conv(h, h, 7, 3, 64)
    h //= 2
    cin = 64
    for out, depth, stride in ((256, 3, 1), (512, 4, 2), (1024, 6, 2),
                               (2048, 3, 2)):
        for i in range(depth):
            s = stride if i == 0 else 1
            width = out // 4
            oh = h // s
            total += _conv(h, h, 1, cin, width)        # conv0
            total += _conv(oh, oh, 3, width, width)    # conv1 (strided)
            total += _conv(oh, oh, 1, width, out)      # conv2
            if s > 1 or cin != out:                    # strided shortcut
                total += _conv(oh, oh, 1, cin, out)
            h, cin = oh, out
    return total + 2048 * classes


def _nf_regnet_b0_hand_count(size=224, classes=1000):
    """DeepMind's NF_RegNet B0 (nf_regnet.py count_flops): widths
    (48, 104, 208, 440) x 0.75, depths (1, 3, 6, 6), every stage strided,
    expansion 2.25 (1 in the first block), groups of 8, SE(width, ratio
    0.5) on the pooled bottleneck, avg-pool + 1x1 shortcut, final conv
    1280*330//440 channels, then the classifier."""
    h = size // 2
    cin = 36
    total = _conv(h, h, 3, 3, cin)
    index = 0
    for out, depth in ((36, 1), (78, 3), (156, 6), (330, 6)):
        for i in range(depth):
            s = 2 if i == 0 else 1
            expansion = 1 if index == 0 else 2.25
            width = int(cin * expansion) // 8 * 8
            oh = h // s
            total += _conv(h, h, 1, cin, width)
            total += _conv(oh, oh, 3, width, width, groups=width // 8)
            hidden = int(width * 0.5)
            total += hidden * width * 2                # SE linears
            total += _conv(oh, oh, 1, width, out)
            if s > 1 or cin != out:
                total += _conv(oh, oh, 1, cin, out)
            h, cin = oh, out
            index += 1
    final = 1280 * 330 // 440
    return total + _conv(h, h, 1, cin, final) + final * classes


def test_nf_resnet50_multiply_adds_match_a_hand_count():
    # Regression: the count crashed on blocks without squeeze-excite and
    # counted the strided 1x1 shortcut at a quarter of its resolution.
    model = keras_nfnets.NFResNet50(input_shape=(224, 224, 3))
    expected = _nf_resnet50_hand_count()
    assert count_macs(model) == expected
    # ResNet-50's widely quoted 4.09 G multiply-adds at 224px.
    assert abs(expected / 1e9 - 4.09) < 0.01


def test_nf_regnet_b0_multiply_adds_match_a_hand_count():
    model = keras_nfnets.NFRegNetB0(input_shape=(224, 224, 3))
    assert count_macs(model) == _nf_regnet_b0_hand_count()


TIMM_COUNT = """
import json, sys, torch, timm
from torch.utils.flop_counter import FlopCounterMode
name, size = sys.argv[1], int(sys.argv[2])
model = timm.create_model(name, pretrained=False).eval()
counter = FlopCounterMode(display=False)
with counter, torch.no_grad():
    model(torch.zeros(1, 3, size, size))
print("RESULT " + json.dumps(counter.get_total_flops() // 2))
"""


def test_l_family_multiply_adds_match_timm():
    """timm's models (symmetric padding, ECA), counted by PyTorch's own
    FlopCounterMode on timm's module in a subprocess (torch and TF do not
    share a process here): the count used to refuse non-SAME padding."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    import pytest  # pylint: disable=import-outside-toplevel
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (the test extra)")
    for constructor, timm_name in (("ECANFNetL0", "eca_nfnet_l0"),
                                   ("NFNetL0", "nfnet_l0")):
        out = subprocess.run(
            [sys.executable, "-c", TIMM_COUNT, timm_name, "224"],
            capture_output=True, text=True, timeout=300, check=False)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
        assert lines, out.stderr[-3000:]
        expected = int(lines[-1].split()[1])
        model = getattr(keras_nfnets, constructor)(input_shape=(224, 224, 3))
        assert count_macs(model) == expected, constructor
