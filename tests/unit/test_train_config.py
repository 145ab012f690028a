"""Trainer configuration: schema and dataclass agree, schedules, fingerprints, appearance model."""

from __future__ import annotations

import pytest
import torch

from aerosplat.config import load_yaml
from aerosplat.errors import InputError
from aerosplat.train import Appearance, TrainConfig, level_scale
from conftest import ROOT


def test_schema_train_section_matches_the_dataclass():
    props = load_yaml(ROOT / "config" / "schema.yaml")["properties"]["train"]["properties"]
    assert set(props) == set(TrainConfig.__dataclass_fields__)
    defaults = TrainConfig()
    for key, spec in props.items():
        value = getattr(defaults, key)
        assert spec["default"] == (value if isinstance(value, (list, str)) else pytest.approx(value)), key


def test_progressive_resolution_levels():
    cfg = TrainConfig(steps=1000, image_scale=0.5, resolution_schedule=[[0, 0.25], [0.2, 0.5], [0.5, 1]])
    assert [level_scale(cfg, s) for s in (0, 199, 200, 499, 500, 999)] == \
        [0.125, 0.125, 0.25, 0.25, 0.5, 0.5]
    assert level_scale(TrainConfig(resolution_schedule=[]), 0) == 1.0


@pytest.mark.parametrize("schedule", [[[0.1, 0.5], [0.5, 1.0]], [[0, 0.5], [0.6, 1], [0.3, 1]], [[0, 2.0]]])
def test_bad_resolution_schedule_is_rejected(schedule):
    with pytest.raises(InputError, match="resolution_schedule"):
        TrainConfig.from_config({"resolution_schedule": schedule})


def test_fingerprint_tracks_what_changes_the_result():
    a = TrainConfig()
    assert a.fingerprint(["x"]) == TrainConfig(device="cuda", log_every=7).fingerprint(["x"])
    assert a.fingerprint(["x"]) != TrainConfig(steps=10).fingerprint(["x"])
    assert a.fingerprint(["x"]) != a.fingerprint(["y"])


def test_appearance_averages_to_identity_over_training_images():
    app = Appearance(5)
    with torch.no_grad():
        app.gain.normal_()
        app.bias.normal_()
    img = torch.rand(4, 4, 3)
    mean = torch.stack([app(img, i) for i in range(5)]).mean(0)
    assert torch.allclose(mean, img, atol=1e-6)  # the splats keep the mean look
