"""The one config dataclass: validation, per-category settings, persistence, resume compatibility."""

import json

import pytest

from colab_utils.config import CATEGORY_AUGMENT, PROFILES, Config, ConfigError


def test_defaults_are_valid_and_round_trip_json(tmp_path):
    cfg = Config()
    path = cfg.save(tmp_path / "cfg.json")
    assert json.loads(path.read_text())["mode"] == cfg.mode
    assert Config.load(path) == cfg


def test_yaml_round_trip_keeps_tuples(tmp_path):
    cfg = Config.for_category("screw", out_scales=(1, 2), loss_scale_weights=(1.0, 0.5), map_scale_weights=(1, 1))
    loaded = Config.load(cfg.save(tmp_path / "cfg.yaml"))
    assert loaded == cfg
    assert isinstance(loaded.out_scales, tuple)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("mode", "vae", "mode"),
        ("channels", 2, "channels"),
        ("image_size", 100, "image_size"),
        ("loss_scale_weights", (1.0,), "loss_scale_weights"),
        ("augment", ("hflip", "spin"), "spin"),
        ("corruptions", ("lava",), "lava"),
        ("corruption_textures", ("moss",), "moss"),
        ("corruption_textures", (), "corruption_textures"),
        ("head_width", 0, "head_width"),
        ("head_focal_gamma", -1.0, "head_focal_gamma"),
        ("threshold_percentile", 10.0, "threshold_percentile"),
        ("lr", 0.0, "lr"),
    ],
)
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        Config(**{field: value})


def test_feature_mode_needs_three_channels():
    with pytest.raises(ConfigError, match="channels=3"):
        Config(mode="feature", channels=1)
    assert Config(mode="unet", channels=1).channels == 1


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochs": 3, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        Config.load(path)


def test_missing_and_broken_files_say_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{epochs: ")
    with pytest.raises(ConfigError, match="could not be parsed"):
        Config.load(broken)


def test_for_category_records_augmentations_and_profile():
    cfg = Config.for_category("screw", profile="cpu", mode="unet")
    assert cfg.augment == CATEGORY_AUGMENT["screw"]
    assert cfg.image_size == PROFILES["cpu"]["unet"]["image_size"]
    # explicit overrides win over the profile
    assert Config.for_category("screw", profile="cpu", mode="unet", image_size=64).image_size == 64
    with pytest.raises(ConfigError, match="profile"):
        Config.for_category("bottle", profile="tpu")


def test_mismatches_ignore_resumable_fields():
    a = Config()
    assert a.mismatches(a.replace(epochs=a.epochs + 10, max_minutes=5, smooth_sigma=2.0)) == {}
    diff = a.mismatches(a.replace(base_width=64))
    assert set(diff) == {"base_width"}
    assert diff["base_width"] == (a.base_width, 64)


def test_threshold_percentile_defaults_per_mode_and_is_recorded():
    from colab_utils.config import THRESHOLD_PERCENTILE

    assert Config(mode="memory_bank").threshold_percentile == THRESHOLD_PERCENTILE["memory_bank"] == 95.0
    assert Config(mode="unet").threshold_percentile == Config(mode="feature").threshold_percentile == 99.0
    assert Config(mode="memory_bank", threshold_percentile=99.0).threshold_percentile == 99.0
    saved = Config(mode="memory_bank").to_dict()
    assert saved["threshold_percentile"] == 95.0  # resolved in the saved config, not None
    assert Config.from_dict({**saved, "mode": "unet"}).threshold_percentile == 95.0  # an explicit value is kept


def test_discriminative_head_needs_the_full_size_reconstruction():
    with pytest.raises(ConfigError, match="discriminative_head"):
        Config(mode="unet", out_scales=(2, 4), loss_scale_weights=(1.0, 1.0), map_scale_weights=(1.0, 1.0),
               discriminative_head=True)
    assert not Config(mode="unet", out_scales=(2, 4), loss_scale_weights=(1.0, 1.0), map_scale_weights=(1.0, 1.0),
                      discriminative_head=False).discriminative_head  # fmt: skip

