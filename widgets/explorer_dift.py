"""The correspondence explorer's DIFT features, computed in a background thread.

"Compute features" starts the computation in a worker thread (the pattern of the
transfer panel, :class:`~widgets.background.BackgroundRun`): the bar and the status
line count the noise draws of both images with a time estimate, Stop ends the work
between two batches of draws, and the explorer stays usable meanwhile (the other
sources, settings already computed). Notebooks and tests that need the features in the
next line call ``compute_dift(block=True)`` or :meth:`wait`.
"""

from __future__ import annotations

from e4e_lab.analysis.lookup import FeatureLookup

from .background import BackgroundRun
from .common import status_html


class DiftComputation(BackgroundRun):
    """Mixin of :class:`~widgets.correspondence.CorrespondenceExplorer`: it keeps
    ``dift_cache``, ``_dift_key()``, ``source`` and ``refresh_source()``."""

    what = "DIFT features"
    stop_message = "stopping after the current batch of noise draws..."
    busy_message = "DIFT features are being computed: Stop them first, or wait"
    state = "idle"
    error: BaseException | None = None

    def run(self, block: bool = False) -> bool:
        """What the compute button does: :meth:`compute_dift`; False if refused (the
        features of other settings are being computed)."""
        if self._dift_key() not in self.dift_cache and self._refuse_if_running():
            return False
        self.compute_dift(block=block)
        return True

    def compute_dift(self, block: bool = False) -> FeatureLookup | None:
        """Show the DIFT features of the slider settings: at once if computed before,
        else computed in a worker thread (``block=True`` waits for it). Returns the
        features when they are there by the time it returns, else None."""
        key = self._dift_key()
        if key in self.dift_cache:
            self._show_dift()
            return self.dift_cache[key]
        if self._refuse_if_running():
            return None
        self.state, self.error = "computing", None
        self.progress.max, self.progress.value = 2 * key[2], 0
        self._start(self._dift_work, (key,), "e4e-dift", block=False)
        if self.source.value != "dift":  # meanwhile: no other source's heatmap
            self.source.value = "dift"
        if block:
            self.wait()
        return self.dift_cache.get(key)

    def _dift_work(self, key: tuple) -> None:
        block, t, ens, prompt, seed = key
        what = f"DIFT features (up-block {block}, t={t}, ensemble {ens}), noise draws"
        p = self.pair
        self._waiting_for_model(what)
        # waits for the model in this thread: the kernel stays free, Stop ends it
        lookup = self._dift_or_none(lambda: FeatureLookup.from_dift(
            self.lab.models, p.structure, p.appearance, p.structure_mask,
            p.appearance_mask, timestep=t, block=block, ensemble=ens, prompt=prompt,
            seed=seed, blocking=True, cancel=self.cancel_event,
            progress=lambda done, total: self._report(done, total, what)), "Compute features")
        if lookup is None:
            return
        self.dift_cache[key] = lookup
        self.state = "done"
        self.progress.bar_style = "success"
        if self.source.value == "dift":  # else the user went on to another source
            self.refresh_source()
        else:
            self.status.value = status_html(f"{lookup.source}: ready under 'DIFT features'",
                                            "ok")

    def _show_dift(self) -> None:
        """Switch to the DIFT source (or refresh it)."""
        if self.source.value != "dift":
            self.source.value = "dift"  # triggers refresh_source
        else:
            self.refresh_source()
