"""The configuration (``e4e_lab/method/config.py``): the step schedule (the published
code's effective steps, or the literal ranges), and validation: every field refuses a
bad value with an error naming the field, the value and the allowed range."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

from e4e_lab.errors import ConfigError, E4ELabWarning
from e4e_lab.method.config import (FLAT_FIELDS, INJECTION_MODES, AdainConfig,
                                   CrossImageConfig, DenoisingConfig, DiftConfig,
                                   GuidanceConfig, InjectionConfig, InversionConfig,
                                   RecordingConfig, TransferConfig)

from conftest import assert_names
from strategies import SETTINGS, json_values


def test_published_schedule_steps_for_the_defaults():
    """The published counter lags one UNet call: refresh at 11, 16, ..., 36, matching
    from 12, AdaIN after steps 49..67 (its callback widens the range by one)."""
    steps = TransferConfig().steps()
    assert steps["refresh"] == [11, 16, 21, 26, 31, 36]
    assert steps["match"] == [i for i in range(12, 68) if i not in (16, 21, 26, 31, 36)]
    assert steps["adain"] == list(range(49, 68))


def test_exact_schedule_steps_for_the_defaults():
    steps = TransferConfig(schedule="exact").steps()
    assert steps["refresh"] == [10, 15, 20, 25, 30, 35]
    assert steps["match"] == [i for i in range(11, 68) if i not in (15, 20, 25, 30, 35)]
    assert steps["adain"] == list(range(50, 68))


def test_schedule_is_validated_and_round_trips():
    cfg = TransferConfig(schedule="exact", mask_resize="area", freeu="diffusers")
    assert TransferConfig.from_dict(cfg.to_dict()) == cfg
    for field, bad in (("schedule", "lagged"), ("mask_resize", "nearest")):
        try:
            TransferConfig(**{field: bad})
        except ValueError as exc:
            assert field in str(exc)
        else:
            raise AssertionError(field)


CONFIG_CASES = [
    ("num_steps", 0, "[1, 1000]"), ("num_steps", 20.0, "[1, 1000]"),
    ("num_steps", True, "[1, 1000]"), ("inversion_cfg", -1.0, "[0.0, 100.0]"),
    ("inversion_cfg", float("nan"), "[0.0, 100.0]"), ("seed", -1, "[0, "),
    ("seed", "7", "[0, "), ("domain", "  ", "non-empty"), ("domain", None, "non-empty"),
    ("prompt_template", "A photo", "{domain}"),
    ("prompt_template", "A {domain} of {kind}", "only placeholder"),
    ("freeu", "yes", "reference, diffusers, off"), ("skip_steps", 100, "[0, 99]"),
    ("skip_steps", -1, "at least one"), ("guidance", -1, "[0.0, 100.0]"),
    ("guidance", float("inf"), "[0.0, 100.0]"), ("guidance", "2.5", "[0.0, 100.0]"),
    ("injection", "q", "one of feature, v, kv, cross-image, none"),
    ("injection", None, "one of"), ("correspondence", "sift", "one of match, dift"),
    ("feat_range", (70, 10), "0 <= start <= end <= 100"),
    ("feat_range", (10, 101), "0 <= start <= end <= 100"),
    ("feat_range", (10,), "0 <= start <= end"), ("feat_range", (1.5, 3), "integers"),
    ("adain_range", "50-100", "0 <= start <= end"), ("adain", 1, "true or false"),
    ("refresh_every", -5, "0 turns the structure refresh off"),
    ("refresh_until", 1001, "[0, 1000]"),
    ("cross_image_contrast", -1, "[0.0, 100.0]"),
    ("cross_image_guidance", (3.5,), "pair"), ("cross_image_guidance", (3.5, -1), "[0.0, 100.0]"),
    ("cross_image_adain_start", -1, "[0, 1000]"), ("dift_timestep", 1000, "[0, 999]"),
    ("dift_block", -1, "[0, 16]"), ("dift_ensemble", 0, "[1, 256]"),
    ("record_matches", "no", "true or false"),
    ("record_attention_layers", "up_blocks.3", "names"),
    ("record_attention_steps", 5, "step indices"),
    ("record_attention_steps", (0, 200), "integers in [0, 100]"),
    ("schedule", "lagged", "one of published, exact"),
    ("mask_resize", "nearest", "one of reference, area"),
]


@pytest.mark.parametrize("field, value, allowed", CONFIG_CASES,
                         ids=[f"{f}={v!r}" for f, v, _ in CONFIG_CASES])
def test_each_config_field_names_field_value_and_range(field, value, allowed):
    with pytest.raises(ConfigError) as e:
        TransferConfig(**{field: value})
    assert e.value.field == field
    assert_names(e, f"'{field}'", repr(value if not isinstance(value, list) else tuple(value)),
                  allowed)


def test_every_config_field_is_covered_above():
    assert set(FLAT_FIELDS) == {f for f, _, _ in CONFIG_CASES}


def test_short_schedules_keep_the_default_thresholds(fast_config):
    """refresh_until / cross_image_adain_start are thresholds, not ranges: a 20-step
    schedule (the CLI has no flag for them) must not be refused because of them."""
    cfg = fast_config.replace(refresh_until=40)
    assert cfg.refresh_until == 40 and cfg.cross_image_adain_start == 20


def test_config_json_is_data(fast_config):
    with pytest.raises(ConfigError, match="unknown field"):
        TransferConfig.from_dict({"__class__": "os.system"})
    with pytest.raises(ConfigError):
        TransferConfig.from_dict(["num_steps", 10])
    assert TransferConfig.from_dict(json.loads(fast_config.to_json())) == fast_config


_FIELDS = list(FLAT_FIELDS)


_wild = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 120), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=8), st.sampled_from(INJECTION_MODES + ("match", "dift", "{domain}",
                                                            "A {domain} {x}")),
    st.tuples(st.integers(-5, 120), st.integers(-5, 120)),
    st.lists(st.integers(-5, 120), max_size=3), st.tuples(st.floats(), st.floats()),
    st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=2), st.none(),
                                                                max_size=1),
)


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(_FIELDS), _wild, max_size=5),
       short=st.booleans())
def test_config_constructs_or_names_a_real_field(changes, short):
    base = dict(num_steps=20, skip_steps=6, feat_range=(2, 12), adain_range=(10, 20)) \
        if short else {}
    try:
        cfg = TransferConfig(**(base | changes))
    except ConfigError as exc:
        assert exc.field in _FIELDS
        assert f"'{exc.field}'" in str(exc)
        return
    again = TransferConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert 0 <= cfg.skip_steps < cfg.num_steps


@SETTINGS
@given(doc=json_values)
def test_config_from_any_json_constructs_or_raises_config_error(doc):
    try:
        TransferConfig.from_dict(doc)
    except ConfigError:
        pass


# -------------------------------------------- hostile inputs (issue 15) --

def _quiet(**fields):
    """The config of ``fields`` and the E4ELabWarning messages its construction gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = TransferConfig(**fields)
    return cfg, [str(w.message) for w in caught if issubclass(w.category, E4ELabWarning)]


def test_the_defaults_and_the_fast_schedule_warn_of_nothing(fast_config):
    assert _quiet()[1] == [] and _quiet(**fast_config.to_dict())[1] == []


def test_a_feature_range_no_step_reaches_warns_through_the_published_lag():
    # 3 denoising steps: the published counter lags one call (0, 0, 1), exact reads 0, 1, 2
    short = dict(num_steps=10, skip_steps=7, adain_range=(0, 10))
    cfg, msgs = _quiet(**short, feat_range=(2, 3))
    assert cfg.steps()["match"] + cfg.steps()["refresh"] == []
    assert len(msgs) == 1 and "feat_range (2, 3)" in msgs[0] and "lags one step" in msgs[0]
    cfg, msgs = _quiet(**short, feat_range=(2, 3), schedule="exact")
    assert msgs == [] and cfg.steps()["match"] == [2]
    assert _quiet(**short, feat_range=(3, 4), injection="none")[1] == []  # nothing asked


def test_an_adain_range_no_step_reaches_warns_unless_adain_is_off():
    short = dict(num_steps=10, skip_steps=7, feat_range=(0, 10))
    cfg, msgs = _quiet(**short, adain_range=(5, 10))
    assert cfg.steps()["adain"] == []
    assert len(msgs) == 1 and "adain_range (5, 10)" in msgs[0] and "--no-adain" in msgs[0]
    assert _quiet(**short, adain_range=(5, 10), adain=False)[1] == []
    assert _quiet(**short, adain_range=(3, 10))[1] == []  # widened by one: step 2 runs it
    msgs = _quiet(**short, adain_range=(0, 10), injection="cross-image",
                  cross_image_adain_start=5)[1]
    assert len(msgs) == 1 and "cross_image_adain_start 5" in msgs[0]


def test_recording_steps_that_do_not_inject_warn():
    msgs = _quiet(num_steps=20, skip_steps=6, feat_range=(2, 12), adain_range=(10, 20),
                  record_attention_layers=("*",), record_attention_steps=(3, 13))[1]
    assert len(msgs) == 1 and "record_attention_steps [13]" in msgs[0]


# ------------------------------------------- the groups (issue 13 item 4) --

#: A valid value other than the default for every flat setting.
OTHER = {
    "num_steps": 120, "inversion_cfg": 5.0, "prompt_template": "a {domain}", "domain": "cat",
    "seed": 3, "freeu": "off", "skip_steps": 10, "guidance": 4.0, "injection": "v",
    "correspondence": "dift", "feat_range": (5, 60), "adain": False, "adain_range": (40, 90),
    "refresh_every": 3, "refresh_until": 30, "schedule": "exact", "mask_resize": "area",
    "cross_image_contrast": 2.0, "cross_image_guidance": (3.0, 1.0),
    "cross_image_adain_start": 10, "dift_timestep": 100, "dift_block": 2, "dift_ensemble": 4,
    "record_matches": True, "record_attention_layers": ("*",), "record_attention_steps": (20,),
}
_GROUP_NAMES = [f.name for f in dataclasses.fields(TransferConfig)]


def _group_of(flat: str) -> str:
    """The group whose field declares the flat name ``flat``."""
    (group,) = [g.name for g in dataclasses.fields(TransferConfig)
                if any(f.metadata["flat"] == flat for f in dataclasses.fields(g.default_factory))]
    return group


def test_flat_and_nested_construction_give_equal_configs():
    flat = TransferConfig(injection="v", adain=False, guidance=3.0, num_steps=50,
                          feat_range=(5, 40), adain_range=(10, 50))
    nested = TransferConfig(inversion=InversionConfig(num_steps=50),
                            injection=InjectionConfig(mode="v", feat_range=(5, 40)),
                            adain=AdainConfig(enabled=False, range=(10, 50)),
                            guidance=GuidanceConfig(3.0))
    assert flat == nested and hash(flat) == hash(nested) and len({flat, nested}) == 1
    assert (flat.injection.mode, flat.adain.enabled, flat.guidance.scale) == ("v", False, 3.0)
    assert flat.inversion.num_steps == flat.num_steps == 50 and flat.feat_range == (5, 40)
    assert flat != flat.replace(seed=1)
    # a flat setting given with its group overrides that field of the group
    mixed = TransferConfig(injection=InjectionConfig(mode="kv"), feat_range=(1, 2))
    assert mixed.injection == InjectionConfig(mode="kv", feat_range=(1, 2))


@pytest.mark.parametrize("flat", FLAT_FIELDS)
def test_replacing_a_flat_setting_changes_only_its_group(flat):
    base, value = TransferConfig(), OTHER[flat]
    new = base.replace(**{flat: value})
    assert new.get(flat) == value and new.to_dict() == base.to_dict() | {flat: value}
    assert [g for g in _GROUP_NAMES if getattr(new, g) != getattr(base, g)] == [_group_of(flat)]
    untouched = [g for g in _GROUP_NAMES if g != _group_of(flat)]
    assert all(getattr(new, g) is getattr(base, g) for g in untouched)
    if flat not in ("injection", "adain", "guidance"):  # those three name their groups
        assert getattr(new, flat) == value  # the read-only shorthand
        with pytest.raises(AttributeError):
            setattr(new, flat, value)
    assert TransferConfig(**{flat: value}) == new == dataclasses.replace(base, **{flat: value})


def test_flat_fields_are_every_group_setting_once_and_round_trip():
    declared = [f.metadata["flat"] for g in dataclasses.fields(TransferConfig)
                for f in dataclasses.fields(g.default_factory)]
    assert sorted(declared) == sorted(FLAT_FIELDS) and len(set(declared)) == len(declared)
    assert set(OTHER) == set(FLAT_FIELDS)
    cfg = TransferConfig(**OTHER)
    assert list(cfg.to_dict()) == list(FLAT_FIELDS)
    assert TransferConfig.from_dict(cfg.to_dict()) == cfg
    assert TransferConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for group in ("inversion", "cross_image", "recording"):  # groups are not JSON settings
        with pytest.raises(ConfigError, match="unknown field"):
            TransferConfig.from_dict({group: {}})


GROUP_CASES = [
    (InversionConfig, {"cfg_scale": -1.0}, "inversion_cfg", "[0.0, 100.0]"),
    (InversionConfig, {"prompt_template": "A photo"}, "prompt_template", "{domain}"),
    (DenoisingConfig, {"skip_steps": 1000}, "skip_steps", "[0, 999]"),
    (GuidanceConfig, {"scale": "2"}, "guidance", "[0.0, 100.0]"),
    (InjectionConfig, {"mode": "q"}, "injection", "one of feature"),
    (InjectionConfig, {"feat_range": (70, 10)}, "feat_range", "<= 1000"),
    (AdainConfig, {"enabled": 1}, "adain", "true or false"),
    (AdainConfig, {"range": [5]}, "adain_range", "pair"),
    (CrossImageConfig, {"guidance": (1.0,)}, "cross_image_guidance", "pair"),
    (DiftConfig, {"ensemble": 0}, "dift_ensemble", "[1, 256]"),
    (RecordingConfig, {"attention_steps": (0, 2000)}, "record_attention_steps", "[0, 1000]"),
]


@pytest.mark.parametrize("cls, values, field, allowed", GROUP_CASES,
                         ids=[f"{c.__name__}-{f}" for c, _, f, _ in GROUP_CASES])
def test_a_group_alone_names_the_flat_field(cls, values, field, allowed):
    """On its own a group bounds step ranges by MAX_STEPS; errors name the flat field."""
    with pytest.raises(ConfigError) as e:
        cls(**values)
    assert e.value.field == field
    assert_names(e, f"'{field}'", allowed)


def test_given_groups_are_checked_against_the_configs_steps():
    with pytest.raises(ConfigError) as e:
        TransferConfig(num_steps=50, adain_range=(10, 50),
                       injection=InjectionConfig(feat_range=(10, 70)))
    assert e.value.field == "feat_range" and "<= 50" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TransferConfig(inversion=InversionConfig(num_steps=20),
                       denoising=DenoisingConfig(skip_steps=32))
    assert e.value.field == "skip_steps" and "[0, 19]" in str(e.value)
    with pytest.raises(ConfigError) as e:
        TransferConfig(inversion="A photo of a {domain}")
    assert e.value.field == "inversion" and "InversionConfig" in str(e.value)
    with pytest.raises(TypeError, match="unexpected keyword argument 'cfg_scale'"):
        TransferConfig(cfg_scale=3.5)


def test_an_unreached_range_warns_where_the_config_is_made_or_replaced():
    short = dict(num_steps=10, skip_steps=7, adain_range=(0, 10), feat_range=(2, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = TransferConfig(**short)
        cfg.replace(seed=1)
    assert [w.filename for w in caught] == [__file__, __file__]
