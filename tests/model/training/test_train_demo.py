"""``rasterfn train-demo``: reproducible recipe, a loss that matches the decision rule, inputs as inference."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from model.card import load_card
from model.errors import ConfigError
from model.network.checkpoint import build_model
from model.predictor.predict import make_normaliser
from model.training import train_demo
from model.training.synthetic import make_scene
from model.training.train_demo import Recipe, canopy_loss, normalise_p90, train

TINY = Recipe(pool_size=2, refresh_every=100, steps=3, batch_size=2, crop_size=32, warmup_steps=1)


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_same_recipe_gives_the_same_weights():
    torch.set_num_threads(1)  # one thread: bit-identical
    first, second = train(TINY), train(TINY)
    assert first.steps == TINY.steps
    assert first.steps_timed == 0
    for key, value in first.net.state_dict().items():
        assert torch.equal(value, second.net.state_dict()[key]), key


def test_another_seed_gives_other_weights():
    torch.set_num_threads(1)
    first = train(TINY).net.state_dict()
    other = train(Recipe(**{**TINY.__dict__, "torch_seed": 99})).net.state_dict()
    assert not torch.equal(first["conv_final.weight"], other["conv_final.weight"])


def test_time_budget_ends_training_early():
    run = train(Recipe(**{**TINY.__dict__, "steps": 10_000}), max_seconds=1e-6)
    assert run.steps == 1
    assert run.steps_timed == 1


@pytest.mark.parametrize(
    ("elapsed", "budget", "steps_done", "steps", "time_counts"),
    [
        (350.0, 720.0, 1000, 1000, False),  # steady 0.35 s/step: done well inside the budget
        (719.0, 720.0, 999, 1000, False),  # steady, finishing just inside it
        (200.0, 720.0, 100, 1000, False),  # slow start, still under half the budget
        (600.0, 720.0, 300, 1000, True),  # busy machine: the budget takes over
    ],
)
def test_time_only_decides_the_schedule_when_the_steps_would_not_fit(elapsed, budget, steps_done, steps, time_counts):
    assert (train_demo._time_progress(elapsed, budget) > steps_done / steps) is time_counts


@pytest.mark.parametrize("minutes", [0, -1.0])
def test_a_budget_that_is_not_positive_is_refused(tmp_path, minutes):
    with pytest.raises(ConfigError, match="--minutes must be positive"):
        train_demo.run_train_demo(argparse.Namespace(out_dir=str(tmp_path), minutes=minutes))
    assert not list(tmp_path.iterdir())


def test_inputs_are_normalised_exactly_as_inference_does():
    image, _ = make_scene(4, size=64)
    p90s = [float(np.percentile(band, 90)) for band in image]
    assert np.array_equal(normalise_p90(image), make_normaliser(image.dtype, p90s)(image))


def test_loss_gives_a_gradient_to_canopy_pixels_the_relu_would_silence():
    # GIVEN a canopy pixel whose pre-ReLU output is negative (relu(z) = 0, so a loss on relu(z) is flat)
    z = torch.tensor([[-1.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0]])
    # WHEN the training loss is differentiated
    canopy_loss(z, target, logit_scale=4.0).backward()
    # THEN the canopy pixel is pushed up and the false positive down
    assert z.grad[0, 0] < 0
    assert z.grad[0, 1] > 0


@pytest.mark.parametrize(("z", "target"), [(0.6, 1.0), (0.4, 0.0)])
def test_loss_is_lower_on_the_right_side_of_the_threshold(z, target):
    right = canopy_loss(torch.tensor([[z]]), torch.tensor([[target]]), 4.0)
    wrong = canopy_loss(torch.tensor([[1.0 - z]]), torch.tensor([[target]]), 4.0)
    assert right < wrong


def test_run_train_demo_keeps_weights_below_the_bar_apart(tmp_path, monkeypatch):
    # GIVEN installed weights, a tiny recipe and one held-out scene
    monkeypatch.setattr(train_demo, "RECIPE", TINY)
    monkeypatch.setattr(train_demo, "HELDOUT_SEEDS", (100_000,))
    (tmp_path / "demo.pt").write_bytes(b"installed")
    # WHEN train-demo runs and the (3-step) model misses the quality bar
    code = train_demo.run_train_demo(argparse.Namespace(out_dir=str(tmp_path), minutes=None))
    # THEN it fails, the installed weights are untouched and the new ones wait in rejected/, loadable
    assert code == 1
    assert (tmp_path / "demo.pt").read_bytes() == b"installed"
    card = load_card(tmp_path / "rejected" / "demo.json")
    build_model(card)
    raw = json.loads(card.path.read_text())
    assert raw["training"]["steps_done"] == TINY.steps
    assert raw["training"]["steps_scheduled_by_time"] == 0
    assert raw["training"]["recipe"]["crop_size"] == 32
    assert raw["quality"]["heldout_seeds"] == [100_000]
    assert raw["quality"]["heldout_iou"] < train_demo.QUALITY_BAR
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pt", "rejected"]  # no staging left behind


def test_run_train_demo_installs_weights_that_pass(tmp_path, monkeypatch):
    # GIVEN an evaluation that reports a passing IoU
    monkeypatch.setattr(train_demo, "RECIPE", TINY)
    monkeypatch.setattr(train_demo, "evaluate", lambda loaded, seeds: {"heldout_iou": 0.95, "pixel_accuracy": 0.99})
    # WHEN train-demo runs THEN the weights and card are installed in out_dir and load together
    assert train_demo.run_train_demo(argparse.Namespace(out_dir=str(tmp_path), minutes=None)) == 0
    assert build_model(load_card(tmp_path / "demo.json")).card.extra["quality"]["heldout_iou"] == 0.95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json", "demo.pt"]
