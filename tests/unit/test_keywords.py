"""Every family takes the builder's keywords (derived from its signature)."""

import inspect

import keras
import pytest

import keras_nfnets
from keras_nfnets import applications, builder
from keras_nfnets import layers as nfl


def test_family_keywords_are_the_builders():
    params = inspect.signature(builder.build_nfnet).parameters
    expected = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    expected -= set(applications._APPLICATION_ARGS)
    assert set(applications._BUILDER_KWARGS) == expected
    assert {"remat", "seed", "drop_rate", "stochdepth_rate",
            "activation"} <= expected


@pytest.mark.parametrize("constructor, extra", [
    (keras_nfnets.NFResNet50, dict(width=1)),
    (keras_nfnets.NFRegNetB0, {}),
])
@pytest.mark.parametrize("remat", [False, True, "auto"])
def test_nf_resnet_and_regnet_take_remat(constructor, extra, remat):
    # Regression: NFResNet50(remat=False) / NFRegNetB0(remat=False) raised
    # TypeError: Unknown argument(s) ['remat'].
    model = constructor(weights=None, classes=10, input_shape=(32, 32, 3),
                        remat=remat, seed=3, **extra)
    blocks = [l for l in model.layers if isinstance(l, nfl.NFBlock)]
    assert blocks and {b.remat for b in blocks} == {remat}
    keras.backend.clear_session()


def test_unknown_keyword_still_names_the_choices():
    with pytest.raises(TypeError, match=r"Unknown argument\(s\) \['remap'\]"
                       r".*'remat'"):
        keras_nfnets.NFResNet50(weights=None, remap=False)
