"""`weights="hf://..."` handles (keras_nfnets/weights/download.py,
`parse_hf_handle`): the form is checked before anything is fetched. The
download itself: tests/integration/test_hub_presets_and_weights.py."""

import pytest

from keras_nfnets.weights import download


@pytest.mark.parametrize("handle, expected", [
    ("hf://timm/eca_nfnet_l0.ra2_in1k", ("timm/eca_nfnet_l0.ra2_in1k", None)),
    ("hf://timm/nfnet_l0.ra2_in1k@v1.0", ("timm/nfnet_l0.ra2_in1k", "v1.0")),
])
def test_parse_hf_handle(handle, expected):
    assert download.parse_hf_handle(handle) == expected


@pytest.mark.parametrize("handle", [
    "hf://timm", "hf://timm/a/b", "hf:///x", "hf://timm/x@", "timm/x"])
def test_malformed_hf_handles_are_refused(handle):
    with pytest.raises(ValueError, match="Hugging Face handle"):
        download.parse_hf_handle(handle)
