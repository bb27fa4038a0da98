"""Checkpoints: the old service's format loads strictly and safely; anything else is a CheckpointError."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from model.card import load_card
from model.errors import CheckpointError
from model.network.checkpoint import (
    build_model,
    clear_model_cache,
    load_model,
    read_state_dict,
    save_checkpoint,
    sha256_file,
)
from model.network.unet import UNet


class OldServiceUNet(nn.Module):
    """An independent re-implementation of the old service's U-Net (10 -> 1, filters 16..256, transpose,
    concat), written from its state_dict layout only: it shares no code with ``model.network.unet``."""

    def __init__(self) -> None:
        super().__init__()
        filters = [16, 32, 64, 128, 256]

        def pair(cin: int, cout: int) -> nn.Module:
            block = nn.Module()
            block.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
            block.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
            return block

        self.down_convs = nn.ModuleList(pair(cin, cout) for cin, cout in zip([10, *filters[:-1]], filters, strict=True))
        ups = []
        for cin in reversed(filters[1:]):
            block = pair(cin, cin // 2)
            block.upconv = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            ups.append(block)
        self.up_convs = nn.ModuleList(ups)
        self.conv_final = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down_convs):
            x = F.relu(block.conv2(F.relu(block.conv1(x))))
            skips.append(x)
            if i < len(self.down_convs) - 1:
                x = F.max_pool2d(x, 2)
        for block, skip in zip(self.up_convs, reversed(skips[:-1]), strict=True):
            x = torch.cat([block.upconv(x), skip], dim=1)
            x = F.relu(block.conv2(F.relu(block.conv1(x))))
        return F.relu(self.conv_final(x))


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def old_net() -> OldServiceUNet:
    torch.manual_seed(3)
    net = OldServiceUNet().eval()
    with torch.no_grad():  # non-zero biases, so a mixed-up bias would show in the outputs
        for name, param in net.named_parameters():
            if name.endswith("bias"):
                param.uniform_(-0.1, 0.1)
    return net


def test_old_service_checkpoint_loads_strictly_and_computes_the_same(tmp_path, old_net, make_card):
    # GIVEN a checkpoint saved by the old service's code, in its {"model_state_dict": ...} format
    path = tmp_path / "live_model.pickle"
    torch.save({"model_state_dict": old_net.state_dict()}, path)
    # WHEN it is loaded through a card
    loaded = build_model(load_card(make_card(path)))
    # THEN every tensor is in place (strict) and both nets give the same output
    x = torch.rand(1, 10, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded.net(x), old_net(x), atol=1e-6)
    assert loaded.sha256 == sha256_file(path)


def test_bare_state_dict_loads(tmp_path, old_net):
    path = tmp_path / "bare.pt"
    torch.save(old_net.state_dict(), path)
    state = read_state_dict(path)
    assert set(state) == set(old_net.state_dict())
    UNet().load_state_dict(state, strict=True)


def test_fp16_checkpoint_loads_as_fp32(tmp_path):
    # GIVEN a net saved with fp16 storage
    net = UNet()
    path = tmp_path / "half.pt"
    digest = save_checkpoint(net, path, fp16=True)
    raw = torch.load(path, weights_only=True)["model_state_dict"]
    assert {t.dtype for t in raw.values()} == {torch.float16}
    # WHEN it is read THEN the tensors are fp32 holding the fp16-rounded values
    state = read_state_dict(path)
    assert {t.dtype for t in state.values()} == {torch.float32}
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value.half().float())
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fp32_save_keeps_full_precision(tmp_path):
    net = UNet()
    save_checkpoint(net, tmp_path / "full.pt", fp16=False)
    state = read_state_dict(tmp_path / "full.pt")
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


class _Payload:
    """A pickle that runs ``os.mkdir(marker)`` when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {"model_state_dict": {"conv_final.weight": p}}])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, wrap):
    # GIVEN a checkpoint whose pickle calls os.mkdir when loaded unsafely
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(wrap(_Payload(str(marker))), path)
    # WHEN it is read THEN it is refused and the payload did not run
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()
    # (control: the payload is live, an unsafe load would have run it)
    torch.load(path, weights_only=False)
    assert marker.is_dir()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([1, 2, 3], "holds list"),
        ({"model_state_dict": {"conv_final.weight": "text"}}, "not a state dict"),
        ({"model_state_dict": torch.zeros(3)}, "not a state dict"),
    ],
)
def test_non_state_dicts_are_refused(tmp_path, content, message):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        read_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"])
def test_garbage_files_are_refused(tmp_path, content):
    path = tmp_path / "garbage.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda s: s.pop("conv_final.bias"), id="missing-key"),
        pytest.param(lambda s: s.__setitem__("extra.weight", torch.zeros(1)), id="unexpected-key"),
        pytest.param(lambda s: s.__setitem__("conv_final.weight", torch.zeros(1, 32, 1, 1)), id="wrong-shape"),
        pytest.param(
            lambda s: s.__setitem__("down_convs.0.conv0.weight", s.pop("down_convs.0.conv1.weight")), id="renamed-key"
        ),
    ],
)
def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, old_net, make_card, mutate):
    state = dict(old_net.state_dict())
    mutate(state)
    path = tmp_path / "wrong.pt"
    torch.save({"model_state_dict": state}, path)
    with pytest.raises(CheckpointError, match="do not fit card"):
        build_model(load_card(make_card(path)))


def test_sha256_mismatch_is_refused(tmp_path, make_card):
    path = tmp_path / "w.pt"
    save_checkpoint(UNet(), path)
    card = load_card(make_card(path, sha256="0" * 64))
    with pytest.raises(CheckpointError, match="sha256"):
        build_model(card)


def test_weights_named_by_the_card_must_exist(tmp_path, make_card):
    path = tmp_path / "w.pt"
    save_checkpoint(UNet(), path)
    card = load_card(make_card(path))
    path.unlink()
    with pytest.raises(CheckpointError, match="not found"):
        build_model(card)


def test_built_model_is_frozen_for_inference(tmp_path, make_card):
    path = tmp_path / "w.pt"
    save_checkpoint(UNet(), path)
    loaded = build_model(load_card(make_card(path)))
    assert not loaded.net.training
    assert not any(p.requires_grad for p in loaded.net.parameters())


def test_load_model_caches_per_card_and_weights(tmp_path, make_card):
    # GIVEN two cards
    path = tmp_path / "w.pt"
    save_checkpoint(UNet(), path)
    first, second = make_card(path, name="a.json"), make_card(path, name="b.json")
    # WHEN each is loaded twice THEN the same object comes back for the same card, another for another card
    assert load_model(first) is load_model(first)
    assert load_model(second) is not load_model(first)
    # AND an explicit weights path is a separate cache entry; clearing the cache builds anew
    assert load_model(first, path) is load_model(first, path)
    cached = load_model(first)
    clear_model_cache()
    assert load_model(first) is not cached
