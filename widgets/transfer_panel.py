"""Transfer panel: the knobs of a transfer, Run / Stop, progress and live previews.

The transfer runs in a background thread, so the kernel stays free to handle widget
events while it runs (the Stop button, the other viewers). Stop sets a
``threading.Event`` that the denoising loop checks between steps, and that the panel's
inversion-progress callback checks between two UNet batches of an inversion. Inversions are
reused from the ``Lab`` cache: a change of guidance, ranges or injection mode re-runs
only the denoising (seed, FreeU and the step count change the inversion itself).
Either image can be replaced by an upload or a path (:class:`~widgets.image_source.ImageSource`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import ipywidgets as W

from e4e_lab.errors import E4ELabError, TransferCancelled
from e4e_lab.io.formats import MaskMode
from e4e_lab.method.config import (CORRESPONDENCE_SOURCES, FREEU_MODES, INJECTION_MODES,
                                   TransferConfig)
from e4e_lab.method.latents import decode, fast_preview
from e4e_lab.method.masks import full_mask

from . import render
from .background import BackgroundRun
from .common import LabWidget, captioned, image_widget, set_image, status_html
from .image_source import ImageSource
from .run_labels import guidance_text, ignored

# config fields the panel controls
CONTROLLED = ("injection", "correspondence", "guidance", "skip_steps", "feat_range", "adain",
              "adain_range", "seed", "freeu")


class TransferPanel(BackgroundRun, LabWidget):
    what = "transfer"
    _inversion_stopped: str | None = None  # how far an inversion got when Stop ended it

    def __init__(self, lab, pair, config: TransferConfig | None = None, gallery=None,
                 preview_every: int = 5, preview: str = "fast", display_size: int = 192):
        self.lab, self.pair = lab, pair
        self.base = config or TransferConfig()
        self.gallery = gallery
        self.display_size = display_size
        # state
        self.state = "idle"  # idle | inverting | running | done | cancelled | failed
        self.result = None
        self.error: BaseException | None = None
        self.steps_done = 0
        self.total_steps = 0
        self.steps_per_s = 0.0
        self.cancelled_at: int | None = None
        self.preview_steps: list[int] = []
        self.observers: list[Callable] = []  # called with each StepEvent (worker thread)
        self.runs = 0
        self._build_controls(preview_every, preview)
        self._run_buttons()
        style = {"description_width": "110px"}
        self.progress = W.IntProgress(value=0, min=0, max=max(1, self.base.denoising_steps),
                                      description="steps", style=style,
                                      layout=W.Layout(width="460px"))
        self.status = W.HTML(status_html("ready"))
        self.preview = image_widget(width=display_size)
        self.result_image = image_widget(width=3 * display_size)
        self.preview.add_class("e4e-preview")  # (the image sources show thumbnails too)
        self.result_image.add_class("e4e-result")
        self._strip = None  # the result strip on show (uint8), for dimming when stale
        self.stale_note = W.HTML(layout=W.Layout(display="none"))
        self.mode_note = W.HTML()
        self.skip_steps.observe(self._on_skip, names="value")
        for control in (self.injection, self.adain):
            control.observe(lambda _: self._on_mode(), names="value")
        self._on_mode()
        self.sources = {role: ImageSource(
            lab, pair.size, lambda image, role=role: self.replace_image(role, image),
            label=role, fit=getattr(pair, role).fit, resample=getattr(pair, role).resample,
            thumb=96, current=getattr(pair, role)) for role in ("appearance", "structure")}

        controls = W.VBox([self.injection, self.mode_note, self.correspondence, self.guidance,
                           self.skip_steps, self.feat_range, W.HBox([self.adain, self.mask]),
                           self.adain_range, self.freeu, self.seed,
                           W.HBox([self.preview_every, self.preview_mode])])
        self.widget = self._frame(
            W.HBox([s.widget for s in self.sources.values()]),
            controls, W.HBox([self.run_button, self.stop_button]), self.progress, self.status,
            W.HBox([captioned(self.preview, "predicted x0 (live)"),
                    W.VBox([W.HTML("<b>structure | appearance | result</b>"),
                            self.stale_note, self.result_image])]),
            title="Transfer")

    def _build_controls(self, preview_every: int, preview: str) -> None:
        """One control per :data:`CONTROLLED` config field (from the base config), the
        mask switch and the preview settings."""
        b, n = self.base, self.base.num_steps
        style = {"description_width": "110px"}
        wide = W.Layout(width="460px")
        self.injection = W.ToggleButtons(options=list(INJECTION_MODES), value=b.injection.mode,
                                         description="injection", style=style)
        names = {"match": "per-layer features", "dift": "DIFT field"}
        self.correspondence = W.ToggleButtons(
            options=[(names.get(s, s), s) for s in CORRESPONDENCE_SOURCES],
            value=b.correspondence, description="matching", style=style)
        self.guidance = W.FloatSlider(value=b.guidance.scale, min=0.0, max=10.0, step=0.1,
                                      description="guidance", style=style, layout=wide)
        self.skip_steps = W.IntSlider(value=b.skip_steps, min=0, max=n - 1,
                                      description="skip steps", style=style, layout=wide)
        self.feat_range = W.IntRangeSlider(value=b.feat_range, min=0, max=n,
                                           description="feature range", style=style, layout=wide)
        self.adain = W.Checkbox(value=b.adain.enabled, description="masked AdaIN")
        self.adain_range = W.IntRangeSlider(value=b.adain_range, min=0, max=n,
                                            description="AdaIN range", style=style, layout=wide)
        self.seed = W.BoundedIntText(value=b.seed, min=0, max=2**31 - 1, description="seed",
                                     style=style)
        self.mask = W.Checkbox(value=True, description="use object masks")
        self.freeu = W.Dropdown(options=FREEU_MODES, value=b.freeu, description="FreeU",
                                style=style)
        self.preview_every = W.IntSlider(value=preview_every, min=1, max=20,
                                         description="preview every", style=style)
        self.preview_mode = W.Dropdown(options=[("fast (latent to RGB)", "fast"),
                                                ("VAE decode", "vae")], value=preview,
                                       description="preview", style=style)

    # --------------------------------------------------------------- config --
    def _on_mode(self) -> None:
        """Disable the controls the injection mode ignores, each with a tooltip saying
        why, and say what the mode uses instead."""
        why = ignored(self.injection.value)
        for name in CONTROLLED:
            control = getattr(self, name)
            control.disabled = name in why
            control.tooltip = f"does not apply: {why[name]}" if name in why else None
        if self.injection.value == "cross-image":
            c = self.base.replace(injection="cross-image", adain=self.adain.value)
            start = c.steps()["adain"][:1]
            self.mode_note.value = status_html(
                f"cross-image uses its own guidance schedule ({guidance_text(c)[2:]}) and "
                + (f"masked AdaIN from step {start[0]}" if start else "no masked AdaIN")
                + ": the guidance slider, the AdaIN range and the matching do not apply",
                "warn")
        elif why:
            self.mode_note.value = status_html(
                "no injection: the matching and the feature range do not apply", "warn")
        else:
            self.mode_note.value = ""

    def _on_skip(self, change) -> None:
        if not self.running:
            self.progress.max = max(1, self.base.num_steps - change["new"])

    def set(self, **values) -> None:
        """Set controls by config field name (and ``mask``), as a user would."""
        for name, value in values.items():
            if name not in CONTROLLED + ("mask",):
                raise KeyError(f"the panel has no control for '{name}'; it controls "
                               f"{', '.join(CONTROLLED + ('mask',))}")
            getattr(self, name).value = tuple(value) if isinstance(value, list) else value

    def config(self) -> TransferConfig:
        """The config the controls describe (raises ConfigError if invalid)."""
        return self.base.replace(**{name: getattr(self, name).value for name in CONTROLLED})

    def run_pair(self):
        """The pair a run uses: the session's, or with whole-image masks when masks are off."""
        if self.mask.value:
            return self.pair
        full_a, full_s = full_mask(self.pair.appearance.size), full_mask(self.pair.structure.size)
        return dataclasses.replace(self.pair, appearance_mask=full_a, structure_mask=full_s,
                                   mask_mode=MaskMode.NONE)

    def replace_image(self, role: str, image) -> None:
        """Run on another ``role`` image (``appearance`` or ``structure``, at the pair's
        size): it has no box yet, so its mask is the whole image; the other image keeps
        its box and mask. The next run inverts the new image once."""
        self.pair = dataclasses.replace(self.pair, **{
            role: image, f"{role}_box": None, f"{role}_mask": full_mask(image.size)})
        self._mark_stale(f"the {role} image changed")
        self.status.value = status_html(
            f"new {role} image '{image.name}', masked as a whole (draw its box in the box "
            "drawer for an object mask): press Run", "ok")

    # ------------------------------------------------------------ run, stop --
    def run(self, block: bool = False) -> bool:
        """Start a transfer in a background thread (``block=True`` waits for it).

        Returns False (and says why in the status) if a run is already going or the
        settings are invalid.
        """
        if self._refuse_if_running():
            return False
        try:
            config = self.config()
        except E4ELabError as exc:
            self.state, self.error = "failed", exc
            self.status.value = status_html(str(exc), "error")
            return False
        self.state, self.error, self.cancelled_at = "inverting", None, None
        self.steps_done, self.steps_per_s = 0, 0.0
        self.total_steps = config.denoising_steps
        self.preview_steps = []
        self._inversion_stopped = None
        self.progress.max, self.progress.value = max(1, self.total_steps), 0
        return self._start(self._work, (config, self.run_pair(), self.mask.value),
                           "e4e-transfer", block)

    # ------------------------------------------------------- worker thread --
    def _work(self, config: TransferConfig, pair, masked: bool) -> None:
        start = time.perf_counter()
        try:
            result = self.lab.transfer(pair, config, callback=self._on_step,
                                       cancel=self.cancel_event,
                                       inversion_progress=self._on_inversion)
        except TransferCancelled as exc:
            where = (f"during the inversion (after {self._inversion_stopped}; nothing was "
                     "cached)" if self._inversion_stopped else
                     f"before step {exc.step} of {exc.total}")
            self.state, self.cancelled_at = "cancelled", exc.step
            self.status.value = status_html(
                f"stopped {where}; the session is ready for another run", "warn")
            self.progress.bar_style = "warning"
            self._mark_stale("stopped")
        else:
            self.result, self.state = result, "done"
            self.runs += 1
            self.progress.bar_style = "success"
            self._show_result(result, pair)
            if self.gallery is not None:
                self.gallery.add(result, pair, masked=masked)
            took = time.perf_counter() - start
            self.status.value = status_html(
                f"done in {took:.1f} s ({self.steps_per_s:.1f} steps/s; {self.cache_note})",
                "ok")

    def _failed(self, exc: BaseException) -> None:
        super()._failed(exc)
        self._mark_stale("failed")

    def _on_inversion(self, done: int, total: int) -> None:
        """Inversion progress; Stop takes effect here too, between two UNet batches
        (raising through the library's progress callback: the inversion is dropped, not
        cached). A finished inversion is kept: the denoising loop then stops at step 0."""
        self.inverted = True
        self.state = "inverting"
        if self.cancel_event.is_set() and done < total:
            self._inversion_stopped = f"{done}/{total} UNet evaluations"
            raise TransferCancelled(0, self.total_steps)
        self.status.value = status_html(f"inverting the pair (once per image and settings): "
                                        f"{done}/{total} UNet evaluations")

    def _on_step(self, event) -> None:
        self.state = "running"
        self.steps_done = event.step + 1
        self.steps_per_s = self.steps_done / max(event.elapsed, 1e-9)
        self.progress.value = self.steps_done
        flags = [f"t={event.timestep}", f"g={event.guidance:.3g}"] + [
            f for f, on in (("injecting", event.injected), ("AdaIN", event.adain)) if on]
        self.status.value = status_html(
            f"step {self.steps_done}/{event.total} ({', '.join(flags)}) - "
            f"{self.steps_per_s:.2f} steps/s")
        last = self.steps_done == event.total
        if self.steps_done % self.preview_every.value == 0 or last:
            self.show_preview(event.pred_x0)
            self.preview_steps.append(event.step)
        for fn in self.observers:
            fn(event)

    def show_preview(self, latent) -> None:
        """Show a (4, h, w) latent: linear latent-to-RGB map, or the VAE."""
        if self.preview_mode.value == "vae":
            image = decode(self.lab.models, latent[None].float())[0]
        else:
            image = fast_preview(latent)
        arr = render.to_uint8(image)
        set_image(self.preview, render.resize_nearest(
            arr, *render.display_shape((arr.shape[1], arr.shape[0]), self.display_size)))

    def _show_result(self, result, pair) -> None:
        strip = render.to_uint8(result.strip(pair.structure.pixels, pair.appearance.pixels))
        h, w = strip.shape[:2]
        scale = self.display_size / h
        self._strip = render.resize_smooth(strip, self.display_size, round(w * scale))
        set_image(self.result_image, self._strip)
        self.stale_note.layout.display = "none"

    def _mark_stale(self, why: str) -> None:
        """After a run that produced nothing: the strip on show (if any) is the previous
        run's; say so above it and dim it."""
        if self._strip is None:
            return
        self.stale_note.value = status_html(
            f"{why} - showing the previous run (run {self.runs}), not this one", "warn")
        self.stale_note.layout.display = None
        faded = self._strip.astype("float32") * 0.4 + 255 * 0.6
        set_image(self.result_image, faded.round().astype("uint8"))
