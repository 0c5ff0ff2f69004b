"""Progress bars of a session (e4e_lab.progress): which bars, their totals and
descriptions, closed however the work ends, and none in widgets' worker threads."""

from __future__ import annotations

import threading

import pytest

from e4e_lab import Lab
from e4e_lab.analysis.lookup import FeatureLookup
from e4e_lab.analysis.recording import transfer_with_features
from e4e_lab.errors import ConfigError, TransferCancelled
from e4e_lab.method import schedule
from e4e_lab.progress import SessionBars, quiet


class FakeBar:
    """A tqdm-like bar that remembers what it was told."""

    def __init__(self, made: list, **kwargs):
        self.kwargs, self.n, self.closed, self.positions = kwargs, 0, False, []
        made.append(self)

    @property
    def desc(self) -> str:
        return self.kwargs["desc"]

    @property
    def total(self) -> int:
        return self.kwargs["total"]

    def update(self, k: int) -> None:
        assert not self.closed, "a closed bar was moved"
        self.n += k
        self.positions.append(self.n)

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def bars():
    """(factory, list of the bars it made)."""
    made: list[FakeBar] = []
    return (lambda **kw: FakeBar(made, **kw)), made


@pytest.fixture()
def bar_lab(models, tmp_path, bars):
    return Lab(models=models, cache_dir=tmp_path / "cache", progress=bars[0])


def _done(bar: FakeBar) -> bool:
    return bar.closed and bar.n == bar.total


def test_a_transfer_shows_inversion_then_denoising(bar_lab, bars, build_pair, fast_config):
    made = bars[1]
    pair = build_pair(bar_lab)
    bar_lab.transfer(pair, fast_config)
    per_image = len(schedule.timesteps_for(bar_lab.models.scheduler, fast_config.num_steps))
    inv, den = made
    assert inv.desc == "inverting 2 image(s)" and inv.total == 2 * per_image and _done(inv)
    assert inv.positions[0] == 0  # shown before the first UNet batch ends
    assert den.desc == "denoising" and den.total == fast_config.denoising_steps and _done(den)
    assert den.positions[:2] == [0, 1] and den.kwargs["leave"] is True
    # again: the inversion is cached (no bar for it), the denoising is not
    made.clear()
    bar_lab.transfer(pair, fast_config)
    assert [b.desc for b in made] == ["denoising"] and _done(made[0])


def test_a_recording_dift_transfer_shows_every_stage(bar_lab, bars, build_pair, fast_config):
    made = bars[1]
    pair = build_pair(bar_lab, boxes=True)
    config = fast_config.replace(correspondence="dift", dift_block=2, dift_ensemble=3)
    result = transfer_with_features(bar_lab, pair, config, feature_steps=(3,))
    assert result.recorder.features  # a recording run
    assert [b.desc for b in made] == ["inverting 2 image(s)", "DIFT features", "denoising"]
    assert all(_done(b) for b in made)
    assert made[1].total == 2 * 3 and made[1].kwargs["unit"] == "draw"


def test_dift_features_report_draws_to_a_callback_a_session_or_tqdm(
        bar_lab, bars, build_pair, monkeypatch):
    made = bars[1]
    pair = build_pair(bar_lab)
    args = (bar_lab.models, pair.structure, pair.appearance)
    seen = []
    FeatureLookup.from_dift(*args, block=2, ensemble=2, progress=lambda d, n: seen.append((d, n)))
    assert seen == [(0, 4), (2, 4), (4, 4)] and not made  # a callback is called as it is
    FeatureLookup.from_dift(*args, block=2, ensemble=3, progress=bar_lab.bars)
    assert [(b.desc, b.total) for b in made] == [("DIFT features", 6)] and _done(made[0])
    # True: a tqdm.auto bar (notebook 03's first DIFT cell passes the session's bars)
    made.clear()
    monkeypatch.setattr("e4e_lab.progress.tqdm_bar", bars[0])
    FeatureLookup.from_dift(*args, block=2, ensemble=1, progress=True)
    assert [(b.desc, b.total) for b in made] == [("DIFT features", 2)] and _done(made[0])


class _SetAfter:
    """A cancel flag that reads set from its ``n``-th check on."""

    def __init__(self, n: int):
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks >= self.n


def test_cancelled_or_failed_work_closes_its_bar(bar_lab, bars, build_pair, fast_config):
    made = bars[1]
    pair = build_pair(bar_lab)
    # DIFT: stopped before the second image's draws
    with pytest.raises(TransferCancelled, match="DIFT features cancelled before noise draw 2 "
                                                "of 4") as info:
        FeatureLookup.from_dift(bar_lab.models, pair.structure, pair.appearance, block=2,
                                ensemble=2, progress=bar_lab.bars, cancel=_SetAfter(2))
    assert (info.value.step, info.value.total) == (2, 4)
    assert made[-1].closed and made[-1].n == 2
    # inversion: a progress callback that raises (the transfer panel's Stop does so)
    def stop(done, total):
        if done > 0:
            raise TransferCancelled(0, 1)

    with pytest.raises(TransferCancelled):
        bar_lab.invert([pair.appearance, pair.structure], fast_config, progress=stop)
    assert made[-1].desc.startswith("inverting") and made[-1].closed
    assert 0 < made[-1].n < made[-1].total
    # denoising: cancelled between two steps
    event = threading.Event()
    with pytest.raises(TransferCancelled):
        bar_lab.transfer(pair, fast_config, cancel=event,
                         callback=lambda ev: ev.step == 2 and event.set())
    assert made[-1].desc == "denoising" and made[-1].closed and made[-1].n == 3
    assert all(b.closed for b in made)


def test_no_bars_unless_asked_and_none_in_a_quiet_thread(models, tmp_path, bars, build_pair,
                                                         fast_config):
    assert not Lab(models=models, cache_dir=tmp_path / "a").bars.active  # library default
    with pytest.raises(ConfigError, match="progress"):
        Lab(models=models, cache_dir=tmp_path / "b", progress="yes")
    factory, made = bars
    lab = Lab(models=models, cache_dir=tmp_path / "c", progress=factory)
    pair = build_pair(lab)
    with quiet():
        assert not lab.bars.active
        lab.transfer(pair, fast_config)
        # quiet is per thread: another thread keeps its bars
        other = threading.Thread(target=lambda: lab.transfer(pair, fast_config))
        other.start()
        other.join()
    assert [b.desc for b in made] == ["denoising"]
    assert lab.bars.active and SessionBars(lab.bars).factory is factory


def test_widget_workers_show_their_own_bar_not_the_sessions(bars, models, tmp_path,
                                                            build_pair, fast_config):
    pytest.importorskip("ipywidgets")
    import widgets
    from widgets import TransferPanel

    factory, made = bars
    lab = widgets.open_lab(models=models, cache_dir=tmp_path / "cache", progress=factory)
    panel = TransferPanel(lab, build_pair(lab), fast_config)
    assert panel.run(block=True) and panel.state == "done" and panel.inverted
    assert made == [] and panel.progress.value == fast_config.denoising_steps
    # a notebook session shows bars by default
    assert widgets.open_lab(models=models, cache_dir=tmp_path / "other").bars.active


def test_the_comparison_bar_moves_every_denoising_step(lab, build_pair, fast_config):
    pytest.importorskip("ipywidgets")
    from widgets import ComparisonGrid

    grid = ComparisonGrid(lab, build_pair(lab), fast_config, methods=("feature", "v"))
    seen, said = [], []
    grid.progress.observe(lambda change: seen.append(change["new"]), names="value")
    grid.status.observe(lambda change: said.append(change["new"]), names="value")
    assert grid.run(block=True) and grid.state == "done", grid.error
    steps = fast_config.denoising_steps
    assert grid.progress.max == 2 * steps and seen[-1] == 2 * steps
    assert set(range(1, 2 * steps + 1)) <= set(seen)  # within a method, not once per method
    assert any("Eye-for-an-eye (V), method 2 of 2; denoising steps: " in s and "left" in s
               for s in said)
