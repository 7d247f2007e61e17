"""`keras_nfnets.list_models` (keras_nfnets/__init__.py): the constructors,
as timm and kimm list theirs. Needs no keras_hub."""

import keras_nfnets
from keras_nfnets import presets


def test_list_models_names_every_public_constructor():
    names = keras_nfnets.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    for name in names:
        assert callable(getattr(keras_nfnets, name)), name
    for name in ("NFNetF0", "NFNetF7Plus", "NFNetL0", "ECANFNetL3",
                 "NFResNet50", "NFResNet50Timm", "NFRegNetB8",
                 "NFRegNetB1Timm"):
        assert name in names
    for generic in ("NFNet", "NFResNet", "NFRegNet", "NFNetModel"):
        assert generic not in names


def test_list_models_pretrained_and_pattern():
    published = keras_nfnets.list_models(pretrained=True)
    assert published == sorted(row["constructor"]
                               for row in presets.PRESETS.values())
    assert keras_nfnets.list_models("*resnet*") == [
        n for n in keras_nfnets.list_models() if "ResNet" in n]
    assert keras_nfnets.list_models("nfnetf0*", pretrained=True) == [
        "NFNetF0"]
