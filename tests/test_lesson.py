"""The method walkthrough's data (e4e_lab.analysis.lesson, lesson_checks, unet_map) and its
figures (widgets.lesson_figures), on the tiny model with one captured transfer."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

from e4e_lab.analysis import lesson  # noqa: E402
from e4e_lab.analysis.lesson_checks import (Verdict, check_ddpm_pieces,  # noqa: E402
                                            check_guidance_split, check_none_reproduces,
                                            check_plan, check_reconstruction, within)
from e4e_lab.analysis.unet_map import unet_map  # noqa: E402
from e4e_lab.method import schedule  # noqa: E402


@pytest.fixture(scope="module")
def captured(shared_lab, build_pair, fast_config):
    pair = build_pair(shared_lab, boxes=True)
    seen = []
    cap = lesson.capture_transfer(shared_lab, pair, fast_config, callback=seen.append)
    return cap, pair, seen


# ------------------------------------------------------------------ step plan --
def _ranges(plan):
    return plan.steps("match"), plan.steps("refresh"), plan.steps("adain")


def test_step_plan_follows_the_config_and_its_published_schedule(fast_config):
    ts = torch.arange(fast_config.num_steps - 1, -1, -1) * 50
    plan = lesson.StepPlan.from_config(fast_config, ts)
    assert plan.total == fast_config.denoising_steps == 14
    assert plan.timesteps.tolist() == ts[6:].tolist()
    steps = fast_config.steps()
    assert _ranges(plan) == (steps["match"], steps["refresh"], steps["adain"])
    # published: the injection tests see step i - 1, so feat_range (2, 12) covers steps
    # 3..12, and the refresh (every 5th counter below 8) falls on counter 5, step 6
    assert plan.counter.tolist()[:4] == [0, 0, 1, 2]
    assert plan.steps("refresh") == [6]
    assert plan.steps("match") == [3, 4, 5] + list(range(7, 13))
    assert plan.steps("adain") == [9, 10, 11, 12, 13]  # (10, 20) widened by one at each end
    assert plan.steps("guided") == list(range(14))
    assert plan.kind(6) == "refresh" and plan.kind(10) == "match + AdaIN"
    assert plan.kind(0) == "no injection"


def test_step_plan_exact_schedule_and_other_settings(fast_config):
    ts = torch.arange(20)
    exact = lesson.StepPlan.from_config(fast_config.replace(schedule="exact"), ts)
    assert exact.counter.tolist() == list(range(14))
    assert exact.steps("refresh") == [5]
    assert exact.steps("match") == [2, 3, 4] + list(range(6, 12))
    assert exact.steps("adain") == [10, 11, 12, 13]
    off = lesson.StepPlan.from_config(
        fast_config.replace(injection="none", adain=False, guidance=1.0), ts)
    assert _ranges(off) == ([], [], []) and off.steps("guided") == []
    cross = lesson.StepPlan.from_config(
        fast_config.replace(injection="cross-image", cross_image_adain_start=10), ts)
    assert cross.guidance[0] == 3.5 and cross.guidance[-1] == 1.75


# ------------------------------------------------------------------ captured run --
def test_capture_keeps_every_step_and_still_calls_back(captured, fast_config):
    cap, _, seen = captured
    n = fast_config.denoising_steps
    assert [e.step for e in seen] == list(range(n))
    assert cap.latents.shape == cap.pred_x0.shape == cap.injected_out.shape == (n, 4, 8, 8)
    assert torch.equal(cap.latents[-1], seen[-1].latent.cpu())
    # the result is the ordinary transfer's, with the matches recorded for the figures
    assert cap.result.recorder.matches and cap.result.recorder.record_matches
    assert torch.equal(cap.x_before[1:], cap.latents[:-1])


def test_capture_equals_an_uncaptured_transfer(captured, shared_lab, fast_config):
    cap, pair, _ = captured
    plain = shared_lab.transfer(pair, fast_config)
    assert torch.equal(plain.image, cap.result.image)


def test_guidance_split_recombines_to_the_guided_prediction(captured):
    cap, _, seen = captured
    for i in (0, 4, 10):
        split = lesson.guidance_split(cap, i)
        assert split.scale == seen[i].guidance == 2.5
        assert split.scales == (0.0, 1.0, 2.5, 5.0)
        assert torch.allclose(split.guided, split.plain + 2.5 * (split.injected - split.plain))
        # scale 2.5's predicted x0 is the one the transfer reported
        assert torch.allclose(split.pred_x0[2], seen[i].pred_x0.cpu(), atol=1e-5)
        # 0 and 1 are the plain and injected predictions alone
        c = cap.coef[i]
        for j, out in ((0, split.plain), (1, split.injected)):
            assert torch.allclose(split.pred_x0[j], schedule.predicted_x0(
                out[None], cap.x_before[i][None], c)[0], atol=1e-5)
    # before any injection only the text differs; injection makes the gap larger
    gap = lesson.guidance_gap(cap)
    assert gap.shape == (cap.plan.total,) and (gap > 0).all()


def test_ddpm_pieces_sum_to_the_step_the_transfer_took(captured):
    cap, _, _ = captured
    for i in range(cap.plan.total):
        p = lesson.ddpm_pieces(cap, i)
        c = cap.coef[i]
        step = schedule.ddpm_step(cap.model_output(i)[None], cap.x_before[i][None],
                                  cap.noise[i][None], c)[0]
        assert torch.allclose(p.total, step, atol=1e-5)
        if not p.adain:
            assert torch.allclose(p.total, cap.latents[i], atol=1e-5)
        else:  # AdaIN moved the latent after the step
            assert not torch.allclose(p.total, cap.latents[i], atol=1e-5)
        assert torch.allclose(p.x0_term, c.alpha_prev.sqrt() * cap.pred_x0[i], atol=1e-5)
    coefs = lesson.step_coefficients(cap)
    assert all(v.shape == (cap.plan.total,) for v in coefs.values())
    sig = coefs["sigma: noise term"]
    assert torch.allclose(sig, cap.coef.sigma.flatten())


def test_refresh_effect_and_film_strip(captured, shared_lab):
    cap, _, _ = captured
    eff = lesson.refresh_effect(cap)
    assert eff.distance.shape == (cap.plan.total,)
    assert eff.example == (5, 6, 7)  # the refresh step 6 between two matched steps
    assert eff.example_x0.shape == (4, 4, 8, 8)
    assert torch.equal(eff.example_x0[2], cap.pred_x0[6])
    strip = lesson.film_strip(cap, shared_lab.models, frames=5)
    assert strip.steps == [0, 3, 6, 10, 13] and strip.images.shape == (5, 3, 64, 64)
    assert strip.kinds[2] == "refresh"


# ------------------------------------------------------------------ verdicts --
def test_verdicts_pass_and_fail_with_their_numbers():
    ok = within("x equals y", 3e-6, 1e-4)
    assert ok and str(ok) == "PASS: x equals y (max error 3.0e-06 <= 1e-04)"
    bad = within("x equals y", 2e-3, 1e-4)
    assert not bad and str(bad) == "FAIL: x equals y (max error 2.0e-03 > 1e-04)"
    assert not within("x", float("nan"), 1.0)
    assert isinstance(ok, Verdict)


def test_the_checks_pass_on_a_faithful_run_and_fail_on_a_broken_one(captured, shared_lab):
    cap, pair, _ = captured
    assert check_plan(cap) and check_guidance_split(cap) and check_ddpm_pieces(cap)
    # tampered captures fail
    broken = lesson.CapturedTransfer(**{**cap.__dict__, "plain_out": cap.plain_out + 0.1})
    assert not check_guidance_split(broken) and not check_ddpm_pieces(broken)
    # the limit follows where the capture ran: 1e-4 in float32 on a CPU, looser elsewhere
    assert cap.exact and str(check_guidance_split(cap)).endswith("<= 1e-04)")
    gpu_like = dataclasses.replace(cap, exact=False)
    assert str(check_ddpm_pieces(gpu_like)).endswith("<= 1e-01)")
    shifted = lesson.CapturedTransfer(**{**cap.__dict__, "event_adain": ~cap.event_adain})
    v = check_plan(shifted)
    assert not v and str(v).startswith("FAIL:") and f"{cap.plan.total} of" in str(v)
    struct_inv = shared_lab.invert([pair.structure], cap.result.config)[0]
    v = check_reconstruction(shared_lab.models, struct_inv, start=6)
    assert v and str(v).startswith("PASS: denoising struct.png from step 6")
    noisy = dataclasses.replace(struct_inv, zs=struct_inv.zs + 0.5)
    assert str(check_reconstruction(shared_lab.models, noisy, start=6)).startswith("FAIL:")


def test_none_check_fails_when_the_images_differ(captured, shared_lab):
    cap, _, _ = captured
    res = cap.result  # an injected run: its image is not the reconstruction
    assert not check_none_reproduces(res, limit=1e-4)
    same = type(res)(**{**res.__dict__, "image": res.structure_recon})
    assert str(check_none_reproduces(same, shared_lab.models)).startswith("PASS: 'none'")


def test_tolerances_are_tight_on_a_cpu_in_float32_and_looser_elsewhere(models):
    from types import SimpleNamespace

    from e4e_lab.analysis.lesson_checks import tolerance

    assert tolerance(models) == 1e-4 and tolerance(models, "image") == 1 / 255
    gpu = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float16)
    assert tolerance(gpu) > 1e-2 and tolerance(gpu, "image") > 1 / 255


# ------------------------------------------------------------------ the UNet map --
def test_unet_map_places_the_injected_layers(models):
    m = unet_map(models, (64, 64))
    assert m.latent_grid == (8, 8) and m.latent_channels == 4
    from e4e_lab.method.layers import injected_layers

    assert m.injected == injected_layers(models.unet)
    up = [b for b in m.blocks if b.side == "up"]
    assert [b.name for b in up if b.injected] == ["up_blocks.2", "up_blocks.3"]
    assert up[-1].grid == (8, 8) and up[-2].grid == (4, 4)
    assert [b.side for b in m.blocks].count("mid") == 1
    assert all(not b.injected for b in m.blocks if b.side != "up")
    assert m.text_tokens == 77 and m.text_width > 0


# ------------------------------------------------------------------ figures --
def test_every_lesson_figure_draws_quickly(captured, shared_lab):
    import time

    import matplotlib.pyplot as plt

    from widgets import lesson_figures as lf

    cap, _, _ = captured
    start = time.perf_counter()
    figs = [lf.unet_diagram(unet_map(shared_lab.models, (64, 64)), shared_lab),
            lf.step_plan(cap.plan, shared_lab),
            lf.guidance(lesson.guidance_split(cap, 4), lesson.guidance_gap(cap), cap.plan,
                        shared_lab),
            lf.ddpm_step([lesson.ddpm_pieces(cap, i) for i in (0, 6, 13)],
                         lesson.step_coefficients(cap), cap.plan, shared_lab),
            lf.structure_refresh(lesson.refresh_effect(cap), cap.plan, shared_lab),
            lf.film_strip(lesson.film_strip(cap, shared_lab.models, frames=4), shared_lab)]
    assert time.perf_counter() - start < 30
    for fig in figs:
        assert fig._suptitle is not None and "random weights" in fig._suptitle.get_text()
        for ax in fig.axes:
            if ax.get_legend() is not None:
                assert ax.get_legend().get_texts()[0].get_fontsize() >= 8
        plt.close(fig)


def test_adain_figure_has_labelled_axes_and_a_legend_clear_of_the_bars(shared_lab):
    """06's AdaIN figure: axis labels on both bar charts, a legend of readable size that
    covers no bar (it was a 6 px legend inside the std chart)."""
    import matplotlib.pyplot as plt

    from e4e_lab.analysis.adain_demo import adain_demo
    from widgets import figures

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:56, 8:56] = 1
    demo = adain_demo(torch.randn(4, 8, 8, generator=g), torch.randn(4, 8, 8, generator=g) + 1,
                      mask, mask)
    fig = figures.adain_before_after(shared_lab, demo, mask, mask)
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.patches]
    assert len(bars) == 2
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in bars)
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert len(legends) == 1
    assert all(t.get_fontsize() >= 8 for t in legends[0].get_texts())
    box = legends[0].get_window_extent()
    assert not any(box.overlaps(ax.get_window_extent()) for ax in bars)
    plt.close(fig)
