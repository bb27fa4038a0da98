"""The U-Net keeps the old service's architecture and state_dict layout."""

from __future__ import annotations

import pytest
import torch

from model.network.unet import UNet

FILTERS = (16, 32, 64, 128, 256)


def old_service_keys() -> set[str]:
    keys = set()
    for i in range(5):
        keys |= {f"down_convs.{i}.{conv}.{p}" for conv in ("conv1", "conv2") for p in ("weight", "bias")}
    for i in range(4):
        keys |= {f"up_convs.{i}.{conv}.{p}" for conv in ("upconv", "conv1", "conv2") for p in ("weight", "bias")}
    return keys | {"conv_final.weight", "conv_final.bias"}


def test_state_dict_keys_are_the_old_services():
    # GIVEN the seed configuration WHEN its state dict is taken THEN the keys are exactly the old service's
    assert set(UNet().state_dict()) == old_service_keys()


@pytest.mark.parametrize("level", range(5))
def test_encoder_channels_double_from_16_to_256(level):
    state = UNet().state_dict()
    in_channels = 10 if level == 0 else FILTERS[level - 1]
    assert state[f"down_convs.{level}.conv1.weight"].shape == (FILTERS[level], in_channels, 3, 3)
    assert state[f"down_convs.{level}.conv2.weight"].shape == (FILTERS[level], FILTERS[level], 3, 3)


@pytest.mark.parametrize("level", range(4))
def test_decoder_halves_channels_and_concatenates_the_skip(level):
    state = UNet().state_dict()
    ins, outs = FILTERS[4 - level], FILTERS[3 - level]
    # ConvTranspose2d weights are (in, out, kh, kw)
    assert state[f"up_convs.{level}.upconv.weight"].shape == (ins, outs, 2, 2)
    assert state[f"up_convs.{level}.conv1.weight"].shape == (outs, 2 * outs, 3, 3)
    assert state[f"up_convs.{level}.conv2.weight"].shape == (outs, outs, 3, 3)
    assert state["conv_final.weight"].shape == (1, 16, 1, 1)


def test_output_has_input_size_one_channel_and_is_non_negative():
    # GIVEN random weights and an input whose side is a multiple of 16
    torch.manual_seed(0)
    net = UNet().eval()
    x = torch.rand(2, 10, 48, 64)
    # WHEN it runs
    with torch.no_grad():
        out = net(x)
    # THEN the output is (batch, 1, H, W), ReLU-ed, and some of it is positive (not all clipped)
    assert out.shape == (2, 1, 48, 64)
    assert out.min() >= 0
    assert out.max() > 0


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({"up_mode": "upsample"}, (1, 1, 32, 32)),
        ({"merge_mode": "add"}, (1, 1, 32, 32)),
        ({"depth": 3, "start_filts": 4, "in_channels": 3, "num_classes": 2}, (1, 2, 32, 32)),
    ],
)
def test_other_valid_configurations_run(kwargs, shape):
    net = UNet(**kwargs).eval()
    with torch.no_grad():
        out = net(torch.rand(1, net.in_channels, 32, 32))
    assert out.shape == shape


def test_size_multiple_follows_depth():
    assert UNet().size_multiple == 16
    assert UNet(depth=3).size_multiple == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"up_mode": "nearest"}, "up_mode"),
        ({"merge_mode": "sum"}, "merge_mode"),
        ({"up_mode": "upsample", "merge_mode": "add"}, "cannot be combined"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)
