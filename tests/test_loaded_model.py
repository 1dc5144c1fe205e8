"""``LoadedModel`` behaves like its module where that makes sense: calling, ``.to``,
``.eval``."""

from __future__ import annotations

import pytest
import torch

from cnnlens import InputError, LoadedModel, load_model, sample_image


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return load_model("squeezenet1_1", pretrained=False)


def test_calling_the_model_is_calling_its_module(model: LoadedModel) -> None:
    x = model.preprocess(sample_image("cat"))
    with torch.no_grad():
        assert torch.equal(model(x), model.module(x))
        assert model(x).shape == (1, 1000)


def test_to_moves_or_casts_in_place_and_returns_the_model() -> None:
    model = load_model("squeezenet1_1", pretrained=False)
    assert model.to("meta") is model
    assert model.device.type == "meta" and model.preprocess(sample_image("cat")).is_meta
    model = load_model("squeezenet1_1", pretrained=False)
    assert model.to(torch.float64) is model
    assert all(p.dtype == torch.float64 for p in model.module.parameters())
    x = model.preprocess(sample_image("cat")).double()
    with torch.no_grad():
        assert model(x).dtype == torch.float64


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_to_an_unavailable_device_is_an_input_error(model: LoadedModel) -> None:
    with pytest.raises(InputError, match="CUDA is not available"):
        model.to("cuda")
    with pytest.raises(InputError, match="CUDA is not available"):
        model.to(device="cuda:0")
    assert model.device.type == "cpu"


def test_eval_undoes_train(model: LoadedModel) -> None:
    model.module.train()
    try:
        assert model.eval() is model
        assert not any(m.training for m in model.module.modules())
    finally:
        model.module.eval()
