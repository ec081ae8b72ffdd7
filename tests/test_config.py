"""The one config: shared fields, the family's own settings nested in it, validation, persistence, resume
compatibility, and old flat configs (before families owned their settings)."""

import json

import pytest

from colab_utils.config import CATEGORY_AUGMENT, MODES, PROFILES, Config, ConfigError
from colab_utils.models import FAMILIES, RETIRED_FAMILIES, get_family
from colab_utils.models.memory_bank import MemoryBankSettings
from colab_utils.models.unet import UNetSettings


def test_defaults_are_valid_and_round_trip_json(tmp_path):
    cfg = Config()
    path = cfg.save(tmp_path / "cfg.json")
    saved = json.loads(path.read_text())
    assert saved["mode"] == cfg.mode
    assert saved["model"] == {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg.model).items()}
    assert Config.load(path) == cfg


def test_yaml_round_trip_keeps_tuples(tmp_path):
    cfg = Config.for_category("screw", mode="unet", out_scales=(1, 2), loss_scale_weights=(1.0, 0.5),
                              map_scale_weights=(1, 1))  # fmt: skip
    loaded = Config.load(cfg.save(tmp_path / "cfg.yaml"))
    assert loaded == cfg
    assert isinstance(loaded.model.out_scales, tuple)


def test_family_fields_go_into_the_family_settings():
    cfg = Config(mode="unet", base_width=8, epochs=3)
    assert isinstance(cfg.model, UNetSettings) and cfg.model.base_width == 8 and cfg.epochs == 3
    assert isinstance(Config().model, MemoryBankSettings)
    assert Config(mode="unet", model={"depth": 3}).model.depth == 3
    # replace keeps the family's settings, takes its fields by name, and a new mode starts from its defaults
    assert cfg.replace(epochs=5).model.base_width == 8
    assert cfg.replace(depth=3).model.depth == 3
    assert cfg.replace(mode="memory_bank").model == MemoryBankSettings()


def test_a_field_of_another_family_names_its_family():
    with pytest.raises(ConfigError, match="'memory_bank' family.*mode='memory_bank'"):
        Config(mode="unet", coreset_ratio=0.1)
    with pytest.raises(ConfigError, match="'unet' family"):
        Config(base_width=8)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("mode", "vae", "mode"),
        ("channels", 2, "channels"),
        ("image_size", 100, "image_size"),
        ("augment", ("hflip", "spin"), "spin"),
        ("threshold_percentile", 10.0, "threshold_percentile"),
        ("lr", 0.0, "lr"),
        ("batch_size", "eight", "batch_size.*whole number"),
        ("epochs", 2.5, "epochs.*whole number"),
        ("smooth_sigma", "big", "smooth_sigma.*number"),
        ("coreset_ratio", 0.0, "coreset_ratio"),
        ("bank_stride", 5, "bank_stride"),
        ("mask_peak_share", 1.0, "mask_peak_share.*0 masks every pixel"),
        ("stand_ins", "all", "stand_ins.*greedy"),
    ],
)
def test_bad_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        Config(**{field: value})


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("loss_scale_weights", (1.0,), "loss_scale_weights"),
        ("corruptions", ("lava",), "lava"),
        ("corruption_textures", ("moss",), "moss"),
        ("corruption_textures", (), "corruption_textures"),
        ("depth", 9, "depth"),
        ("base_width", 0, "base_width"),
    ],
)
def test_bad_unet_values_name_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        Config(mode="unet", **{field: value})


def test_unknown_keys_are_named(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"epochs": 3, "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match="learning_rate"):
        Config.load(path)


def test_a_hand_written_file_may_give_family_fields_flat_or_nested(tmp_path):
    flat, nested = tmp_path / "flat.json", tmp_path / "nested.json"
    flat.write_text(json.dumps({"mode": "unet", "base_width": 8}))
    nested.write_text(json.dumps({"mode": "unet", "model": {"base_width": 8}}))
    assert Config.load(flat) == Config.load(nested) == Config(mode="unet", base_width=8)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"mode": "unet", "model": {"base_width": "wide"}}))
    with pytest.raises(ConfigError, match="base_width"):
        Config.load(wrong)


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
    assert cfg.image_size == get_family("unet").profiles["cpu"]["image_size"]
    assert cfg.model.base_width == get_family("unet").profiles["cpu"]["base_width"]
    # explicit overrides win over the profile
    assert Config.for_category("screw", profile="cpu", mode="unet", image_size=64).image_size == 64
    with pytest.raises(ConfigError, match="profile"):
        Config.for_category("bottle", profile="tpu")


@pytest.mark.parametrize("mode", MODES)
def test_every_family_declares_every_profile_with_valid_values(mode):
    family = get_family(mode)
    assert set(family.profiles) == set(PROFILES)
    for profile in PROFILES:
        Config.for_category("bottle", profile=profile, mode=mode)  # raises on a value that does not validate


def test_a_missing_profile_entry_is_an_error_not_silence(monkeypatch):
    family = get_family("unet")
    monkeypatch.setattr(type(family), "profiles", {k: v for k, v in family.profiles.items() if k != "gpu"})
    with pytest.raises(ConfigError, match="'unet' family declares no 'gpu' profile"):
        Config.for_category("bottle", profile="gpu", mode="unet")


def test_mismatches_ignore_resumable_fields():
    a = Config(mode="unet")
    assert a.mismatches(a.replace(epochs=a.epochs + 10, max_minutes=5, smooth_sigma=2.0, map_gms_weight=0.0)) == {}
    diff = a.mismatches(a.replace(base_width=64))
    assert diff == {"base_width": (a.model.base_width, 64)}
    bank = Config()
    assert bank.mismatches(bank.replace(bank_search="faiss")) == {}
    assert set(bank.mismatches(bank.replace(coreset_ratio=0.1))) == {"coreset_ratio"}


def test_threshold_percentile_defaults_per_family_and_is_recorded():
    assert Config(mode="memory_bank").threshold_percentile == get_family("memory_bank").threshold_percentile == 95.0
    assert Config(mode="unet").threshold_percentile == 99.0
    assert Config(mode="memory_bank", threshold_percentile=99.0).threshold_percentile == 99.0
    saved = Config(mode="memory_bank").to_dict()
    assert saved["threshold_percentile"] == 95.0  # resolved in the saved config, not None
    unet = {**saved, "mode": "unet", "model": {}}
    assert Config.from_dict(unet).threshold_percentile == 95.0  # an explicit value is kept


def test_modes_come_from_the_registry():
    assert MODES == tuple(FAMILIES) and set(MODES) == {"memory_bank", "unet"}


def _old_flat(mode: str, **changes) -> dict:
    """A config as the old flat format saved it: every family's fields, the retired ones included."""
    old = {k: v for k, v in Config(mode=mode).to_dict().items() if k != "model"}
    for family in FAMILIES.values():
        old.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(family.settings()).items()})
    old.update(feature_latent=64, feature_pool=0, feature_downsample=False, feature_cosine_weight=0.0,
               discriminative_head=False, head_width=16, head_loss_weight=1.0, head_focal_gamma=2.0,
               head_recon_map_weight=0.0)  # fmt: skip
    old.update(changes)
    return old


def test_an_old_flat_config_loads_into_its_family():
    cfg = Config.from_dict(_old_flat("memory_bank", coreset_ratio=0.05, feature_layers=[1, 3, 6]))
    assert cfg.mode == "memory_bank" and cfg.model.coreset_ratio == 0.05
    cfg = Config.from_dict(_old_flat("unet", base_width=8, head_width=4))
    assert cfg.mode == "unet" and cfg.model.base_width == 8


def test_retired_family_and_option_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="retired.*87.1 against 97.6"):
        Config.from_dict(_old_flat("feature"))
    with pytest.raises(ConfigError, match="retired"):
        Config(mode="feature")
    assert "feature" in RETIRED_FAMILIES
    with pytest.raises(ConfigError, match="discriminative head.*retired.*85.9 / 78.1 / 76.1"):
        Config.from_dict(_old_flat("unet", discriminative_head=True))
    with pytest.raises(ConfigError, match="discriminative head.*retired"):
        Config(mode="unet", discriminative_head=True)


def test_a_saved_configs_family_settings_win_over_the_profile(tmp_path):
    saved = Config(mode="unet", base_width=4, depth=3).to_dict()  # as --config FILE gives them: nested
    saved.pop("category")
    cfg = Config.for_category("bottle", profile="cpu", **saved)
    assert cfg.model.base_width == 4 and cfg.model.depth == 3  # the cpu profile would set base_width 16
    assert Config.for_category("bottle", profile="cpu", mode="unet").model.base_width == 16
