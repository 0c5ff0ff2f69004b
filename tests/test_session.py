"""The session (``e4e_lab/session.py``): ``Lab`` resolves boxes and masks, and survives
faults: a cancelled, failed or interrupted run, a run out of memory, or a busy model
leaves it usable, with the model restored and the same results as before.

Determinism. On the CPU the same inputs, seed and config give bit-identical outputs
(``test_same_inputs_give_bit_identical_outputs``): the inversion noise is drawn from a
seeded CPU generator and every CPU kernel used here is deterministic. On a GPU the
results agree only to a tolerance unless you opt in to determinism, because

- some CUDA kernels are nondeterministic (atomic adds in backward passes, scatter and
  index ops, some convolution algorithms chosen by cuDNN's benchmark autotuner), and
  cuBLAS may pick a different reduction split from one call to the next;
- fp16 (our CUDA default) rounds differently from fp32, and different GPUs, driver or
  library versions choose different kernels;
- ``scaled_dot_product_attention`` picks a backend (flash, memory-efficient, math) by
  GPU, dtype and shape, and these sum in different orders.

For repeatable GPU runs call ``torch.use_deterministic_algorithms(True)``, set
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (or ``:16:8``) before CUDA starts, turn off
``torch.backends.cudnn.benchmark``, pin the SDPA backend (``torch.nn.attention.sdpa_kernel``)
and use fp32 (``--dtype float32``). Runs are then repeatable on one machine and software
stack, not across GPU models. The seeded CPU generator keeps the inversion noise itself
identical on every device.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from e4e_lab import Lab
from e4e_lab.analysis.lookup import FeatureLookup
from e4e_lab.errors import DeviceOutOfMemoryError, MaskError, ModelBusy, TransferCancelled

from conftest import APP_BOX, SMALL, STRUCT_BOX, assert_names


def test_pair_resolves_boxes_by_name_for_files_without_digits(lab, tmp_path, images):
    for name, px in zip(("cat.png", "horse.png"), images):
        Image.fromarray((px.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
            tmp_path / name)
    (tmp_path / "boxes.json").write_text(json.dumps({"_size": 128, "cat.png": [16, 16, 112, 112],
                                                     "horse": [0, 32, 128, 96]}))
    pair = lab.pair(tmp_path / "cat.png", tmp_path / "horse.png", boxes=tmp_path / "boxes.json",
                    mask="box", size=SMALL)
    assert pair.appearance_box == (8, 8, 56, 56) and pair.structure_box == (0, 16, 64, 48)
    assert pair.structure_mask.sum() == 64 * 32


class _EmptySam:
    """Stands in for SAM-HQ returning an empty mask (e.g. a box on plain background)."""

    def mask(self, image, box, points=None, labels=None):
        return torch.zeros(image.size[1], image.size[0])


def test_an_empty_sam_mask_is_refused_with_what_to_do(models, tmp_path, images):
    lab = Lab(models=models, cache_dir=tmp_path, sam=_EmptySam())
    with pytest.raises(MaskError) as e:
        lab.pair(images[0], images[1], appearance_box=APP_BOX, structure_box=STRUCT_BOX,
                 mask="sam", size=SMALL)
    assert_names(e, "SAM-HQ returned an empty mask", "--mask box")


def _unet_state(unet) -> dict:
    procs = {name: type(p) for name, p in unet.attn_processors.items()}
    freeu = [(getattr(b, "b1", None), getattr(b, "s1", None)) for b in unet.up_blocks]
    return {"procs": procs, "freeu": freeu}


class _Boom(RuntimeError):
    pass


def _faulty_callback(kind: str, at: int, cancel: threading.Event):
    def callback(ev):
        if ev.step == at:
            if kind == "cancel":
                cancel.set()
            elif kind == "exception":
                raise _Boom(f"failure in the callback at step {ev.step}")
            else:
                raise KeyboardInterrupt
    return callback


@pytest.mark.parametrize("kind, expected", [("cancel", TransferCancelled),
                                            ("exception", _Boom),
                                            ("keyboard", KeyboardInterrupt)])
def test_faults_inside_a_run_leave_the_lab_usable(warm_lab, build_pair, fast_config, warm_reference,
                                                  kind, expected):
    lab = warm_lab
    unet = lab.models.unet
    before = _unet_state(unet)
    pair = build_pair(lab, boxes=True)
    cfg = fast_config
    cancel = threading.Event()
    with pytest.raises(expected) as e:
        lab.transfer(pair, cfg, callback=_faulty_callback(kind, 1, cancel), cancel=cancel)
    if kind == "cancel":
        assert e.value.step == 2 and e.value.total == cfg.denoising_steps
    assert _unet_state(unet) == before  # processors and FreeU restored
    assert not any("E4E" in t.__name__ for t in _unet_state(unet)["procs"].values())
    steps = []
    result = lab.transfer(pair, cfg, callback=lambda ev: steps.append(ev.step))
    assert steps == list(range(cfg.denoising_steps))
    assert torch.equal(result.image, warm_reference.image)
    assert torch.equal(result.latents, warm_reference.latents)
    assert _unet_state(unet) == before


def test_interrupted_inversion_leaves_the_cache_consistent(lab, build_pair, fast_config,
                                                           reference_run):
    pair = build_pair(lab, boxes=True)
    cfg = fast_config

    def interrupt(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lab.transfer(pair, cfg, inversion_progress=interrupt)
    folder = lab.disk_cache.folder
    assert not [p for p in folder.iterdir() if p.suffix != ".lock"]  # nothing half-written
    result = lab.transfer(pair, cfg)
    assert torch.equal(result.image, reference_run[0].image)
    assert len(list(folder.glob("*.safetensors"))) == 2


def _oom_after(n_ok: int, real_forward):
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)
    return forward


def test_out_of_memory_during_denoising_is_mapped_and_recoverable(warm_lab, build_pair, fast_config,
                                                                  warm_reference, monkeypatch):
    lab = warm_lab
    unet = lab.models.unet
    pair = build_pair(lab, boxes=True)
    cfg = fast_config
    lab.invert([pair.appearance, pair.structure], cfg)
    before = _unet_state(unet)
    monkeypatch.setattr(unet, "forward", _oom_after(2, unet.forward))
    with pytest.raises(DeviceOutOfMemoryError) as e:
        lab.transfer(pair, cfg)
    assert "reduce" in str(e.value)
    monkeypatch.undo()
    assert _unet_state(unet) == before
    assert torch.equal(lab.transfer(pair, cfg).image, warm_reference.image)


@pytest.mark.parametrize("stage", ["inversion", "decode"])
def test_out_of_memory_at_other_stages_is_mapped(request, build_pair, fast_config, monkeypatch,
                                                 stage):
    # inversion: a session with an empty cache; decode: one that reads cached inversions
    lab = request.getfixturevalue("lab" if stage == "inversion" else "warm_lab")
    pair = build_pair(lab, boxes=True)
    cfg = fast_config
    if stage == "inversion":
        unet = lab.models.unet
        monkeypatch.setattr(unet, "forward", _oom_after(0, unet.forward))
    else:
        vae = lab.models.vae
        monkeypatch.setattr(vae, "decode", _oom_after(0, vae.decode))
    with pytest.raises(DeviceOutOfMemoryError, match="reduce"):
        lab.transfer(pair, cfg)


def test_same_inputs_give_bit_identical_outputs(models, build_pair, fast_config, reference_run,
                                                tmp_path):
    """Two fresh sessions (own caches, inversion recomputed) agree bit for bit on the
    CPU. See this module's docstring for what differs on a GPU."""
    lab = Lab(models=models, cache_dir=tmp_path / "again")
    result = lab.transfer(build_pair(lab, boxes=True), fast_config)
    ref = reference_run[0]
    for name in ("image", "appearance_recon", "structure_recon", "latents"):
        assert torch.equal(getattr(result, name), getattr(ref, name)), name


def test_a_run_from_cached_inversions_equals_the_run_that_computed_them(reference_run,
                                                                        warm_reference):
    assert torch.equal(warm_reference.latents, reference_run[0].latents)
    assert torch.equal(warm_reference.image, reference_run[0].image)


def test_a_busy_model_is_refused_at_once_or_waited_for(lab, build_pair, fast_config):
    """A transfer holds the model (Lab.transfer, Lab.invert); a non-blocking feature
    lookup in another thread gets ModelBusy at once, a blocking one waits for it."""
    pair = build_pair(lab, boxes=True)
    held, release = threading.Event(), threading.Event()

    def hold():
        with lab.models.in_use():
            held.set()
            release.wait(30)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait(30)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ModelBusy, match="compute features when it has finished"):
            FeatureLookup.from_dift(lab.models, pair.structure, pair.appearance, ensemble=1,
                                    blocking=False)
        assert time.perf_counter() - t0 < 1.0
        waited = []
        blocker = threading.Thread(target=lambda: waited.append(lab.dift_field(
            pair, fast_config.replace(dift_ensemble=1))))
        blocker.start()
        blocker.join(0.5)
        assert blocker.is_alive() and not waited  # Lab.dift_field waits for the model
    finally:
        release.set()
        worker.join(30)
    blocker.join(60)
    assert len(waited) == 1


# ---------------------------------------------------------------------------------
# Issue 15: the session's inversions do not depend on what its cache holds, and a cache
# folder it cannot use costs one warning, not the run.


def test_session_inversions_do_not_depend_on_the_cache(models, images, fast_config, tmp_path):
    """``cat->coffee_cup`` then ``cat->horse`` in one session (and in the next one on the
    same cache) equals ``cat->horse`` in a session on a clean cache, bit for bit."""
    cup_pixels = images[0].flip(-1) * 0.5 + images[1] * 0.5
    clean = Lab(models=models, cache_dir=tmp_path / "clean")
    cat, horse = (clean.load_image(im, SMALL, name=n)
                  for im, n in zip(images, ("cat.png", "horse.png")))
    want = clean.invert([cat, horse], fast_config)
    busy = Lab(models=models, cache_dir=tmp_path / "busy")
    busy.invert([cat, busy.load_image(cup_pixels, SMALL, name="coffee_cup.png")], fast_config)
    for lab in (busy, Lab(models=models, cache_dir=tmp_path / "busy")):
        got = lab.invert([cat, horse], fast_config)
        for g, w in zip(got, want):
            assert torch.equal(g.xts, w.xts) and torch.equal(g.zs, w.zs)


def test_a_cache_dir_that_is_a_file_runs_uncached_with_one_warning(models, build_pair,
                                                                   fast_config, tmp_path,
                                                                   caplog, reference_run):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("a file")
    with caplog.at_level("WARNING"):
        lab = Lab(models=models, cache_dir=not_a_folder)
        result = lab.transfer(build_pair(lab, boxes=True), fast_config)
    assert torch.equal(result.image, reference_run[0].image)
    warnings = [r.getMessage() for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(warnings) == 1 and str(not_a_folder) in warnings[0]
    assert not_a_folder.read_text() == "a file"
