"""The step schedule: the published code's effective steps, and the literal ranges."""

from e4e_lab.method.config import TransferConfig


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
