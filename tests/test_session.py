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
import warnings

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


# -------------------------------------------- hostile inputs (issue 15) --

@pytest.mark.parametrize("kwargs, words", [
    (dict(device="nonsense"), ["'device'", "nonsense", "'cpu'"]),
    (dict(device="cuda:99"), ["'device'", "cuda:99"]),
    (dict(device=3), ["'device'", "'cpu'"]),
    (dict(dtype="int8"), ["'dtype'", "int8", "'float16'"]),
    (dict(dtype=torch.float64), ["'dtype'", "float64"]),
])
def test_bad_devices_and_dtypes_are_typed_errors_before_loading(models, kwargs, words):
    from e4e_lab.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        Lab(models=models, **kwargs)
    assert_names(exc, *words)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_typed_error(models):
    from e4e_lab.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        Lab(models=models, device="cuda")
    assert_names(exc, "'device'", "no CUDA GPU", "'cpu'")


@pytest.mark.parametrize("name, dtype", [("float16", torch.float16), ("fp32", torch.float32),
                                         ("bfloat16", torch.bfloat16)])
def test_dtype_names_are_converted_explicitly(name, dtype):
    from e4e_lab.models.device import resolve_dtype

    assert resolve_dtype(name) is dtype and resolve_dtype(dtype) is dtype


def test_dtype_given_as_a_string_reaches_the_model(tmp_path):
    lab = Lab(model="tiny", device="cpu", dtype="bfloat16", cache_dir=tmp_path / "c")
    assert lab.models.dtype is torch.bfloat16


def test_a_cache_dir_that_is_a_file_is_a_typed_error(models, tmp_path):
    from e4e_lab.errors import ConfigError

    (tmp_path / "cache").write_text("a file")
    with pytest.raises(ConfigError) as exc:
        Lab(models=models, cache_dir=tmp_path / "cache")
    assert_names(exc, "'cache_dir'", "not a file")
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as mp:  # the same through the environment variable
        mp.setenv("E4E_LAB_CACHE", str(tmp_path / "cache"))
        with pytest.raises(ConfigError) as exc:
            Lab(models=models)
    assert_names(exc, "'E4E_LAB_CACHE'", "not a file")


@pytest.mark.parametrize("bad, words", [
    (torch.rand(3, 0, 64), ["empty"]),
    ((torch.rand(3, 64, 64) * 255).round(), ["outside [0, 1]", "255"]),
    (torch.full((3, 64, 64), float("nan")), ["NaN"]),
    (np.full((64, 64, 3), np.nan), ["NaN"]),
    (torch.rand(1, 64, 64), ["(3, H, W)"]),
])
@pytest.mark.parametrize("role", ["appearance", "structure"])
def test_pair_refuses_bad_image_tensors_naming_the_argument(lab, images, bad, words, role):
    from e4e_lab.errors import ImageError

    args = {"appearance": images[0], "structure": images[1], role: bad}
    with pytest.raises(ImageError) as exc:
        lab.pair(**args, size=SMALL, mask="none")
    assert_names(exc, f"'{role}'", *words)


def test_pair_accepts_a_uint8_tensor_as_0_to_255(lab, images):
    as_bytes = (images[0] * 255).round().to(torch.uint8)
    pair = lab.pair(as_bytes, images[1], size=SMALL, mask="none")
    ref = lab.pair(as_bytes.float() / 255, images[1], size=SMALL, mask="none")
    assert torch.equal(pair.appearance.pixels, ref.appearance.pixels)


def test_a_boxes_file_naming_neither_image_warns(lab, tmp_path, images):
    from e4e_lab.errors import E4ELabWarning

    for name, img in (("cat.png", images[0]), ("horse.png", images[1])):
        Image.fromarray((img * 255).round().byte().permute(1, 2, 0).numpy()).save(tmp_path / name)
    (tmp_path / "boxes.json").write_text(json.dumps({"kitten.png": [1, 1, 40, 40]}))
    with pytest.warns(E4ELabWarning, match="'cat.png', 'horse.png'.*'kitten.png'"):
        pair = lab.pair(tmp_path / "cat.png", tmp_path / "horse.png",
                        boxes=tmp_path / "boxes.json", size=SMALL, mask="box")
    assert pair.appearance_mask.all() and pair.structure_box is None


def test_a_size_the_memory_cannot_hold_is_refused_before_loading(lab, images, monkeypatch):
    from e4e_lab.errors import ConfigError
    from e4e_lab.models import device

    monkeypatch.setattr(device, "available_bytes", lambda _device: 2**20)
    with pytest.raises(ConfigError) as exc:
        lab.pair(images[0], images[1], size=SMALL, mask="none")
    assert_names(exc, "'size'", "GiB", "smaller size")


def test_unknown_attention_layers_warn_once_the_layers_are_known(shared_lab, build_pair,
                                                                  fast_config):
    from e4e_lab.errors import E4ELabWarning

    cfg = fast_config.replace(record_attention_layers=("up_blocks.9.nothing",),
                              record_attention_steps=(3,))
    with pytest.warns(E4ELabWarning, match="up_blocks.9.nothing.*use '\\*'"):
        result = shared_lab.transfer(build_pair(shared_lab), cfg)
    assert result.recorder.attention == {}


def test_the_recorder_checks_layer_names_when_the_layers_are_installed():
    from e4e_lab.errors import E4ELabWarning
    from e4e_lab.method.recording import RunRecorder
    from e4e_lab.method.regions import InjectionState, RegionPair

    layers = ["up_blocks.1.a.attn1.processor", "up_blocks.2.b.attn1.processor"]
    for asked, warns in (((layers[0], "*"), False), (("nope",), True)):
        rec = RunRecorder(attention_layers=asked)
        from e4e_lab import TransferConfig

        state = InjectionState(TransferConfig(), (4, 4),
                               [RegionPair(torch.ones(4, 4), torch.ones(4, 4))], "cpu",
                               recorder=rec)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            state.set_layers(layers)  # what the `injection` manager does before step 0
        assert [issubclass(w.category, E4ELabWarning) for w in caught] == ([True] if warns else [])


def test_a_size_over_the_hard_limit_is_refused_by_the_session(lab, images):
    from e4e_lab.errors import ConfigError

    with pytest.raises(ConfigError) as exc:  # 99968 is a multiple of 64: only the limit stops it
        lab.load_image(images[0], 99968)
    assert_names(exc, "'size'", "99968", "4096")


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


def test_config_json_records_where_the_masks_came_from(lab, images, caplog):
    """``auto`` is recorded as what it did (box without SAM-HQ, none without boxes), masks
    passed in as ``given``; the missing checkpoint is said once per session."""
    lab.sam_checkpoint, lab._sam = None, None
    app = lab.load_image(images[0], SMALL, name="app.png")
    struct = lab.load_image(images[1], SMALL, name="struct.png")
    with caplog.at_level("WARNING"):
        boxed = [lab.pair(app, struct, appearance_box=APP_BOX, structure_box=STRUCT_BOX)
                 for _ in range(2)]
    said = [r for r in caplog.records if "no SAM-HQ checkpoint" in r.getMessage()]
    if not lab.sam_available():
        assert boxed[0].describe()["mask"] == "box" and len(said) == 1
    assert lab.pair(app, struct).describe()["mask"] == "none"
    given = lab.pair(app, struct, appearance_mask=torch.ones(SMALL, SMALL),
                     structure_mask=torch.ones(SMALL, SMALL))
    assert given.describe()["mask"] == "given"
    multi = lab.pair(struct, objects=[{"appearance": app, "target_box": STRUCT_BOX}])
    assert multi.describe()["mask"] in ("box", "sam")


# ------------------------------------------------ one Lab.pair for one or many objects --

def test_one_pair_call_makes_one_object_or_several(lab, images):
    """``lab.pair(structure, objects=...)`` is what ``multi_pair`` did (which stays as
    its alias); the structure may also be passed as ``structure=``."""
    from e4e_lab.method.pairs import MultiPair, Pair

    app = lab.load_image(images[0], SMALL, name="app.png")
    struct = lab.load_image(images[1], SMALL, name="struct.png")
    objects = [{"appearance": app, "target_box": STRUCT_BOX, "appearance_box": APP_BOX}]
    made = [lab.pair(struct, objects=objects, mask="box"),
            lab.pair(structure=struct, objects=objects, mask="box"),
            lab.multi_pair(struct, objects, mask="box")]
    assert all(type(m) is MultiPair for m in made)
    assert all(m.boxes == [(STRUCT_BOX, APP_BOX)] and m.describe() == made[0].describe()
               and torch.equal(m.regions[0].target_mask, made[0].regions[0].target_mask)
               for m in made)
    one = lab.pair(app, struct, appearance_box=APP_BOX, structure_box=STRUCT_BOX, mask="box")
    assert type(one) is Pair
    assert torch.equal(one.regions[0].target_mask, made[0].regions[0].target_mask.float())


@pytest.mark.parametrize("argument, where", [
    ("appearance", "objects[n]['appearance']"),
    ("appearance_box", "objects[n]['appearance_box']"),
    ("structure_box", "objects[n]['target_box']"),
    ("boxes", "read_pairs"),
    ("appearance_mask", "objects[n]['appearance_mask']"),
    ("structure_mask", "objects[n]['target_mask']"),
])
def test_one_object_arguments_with_objects_are_refused_naming_the_fix(lab, images, argument,
                                                                       where):
    from e4e_lab.errors import ConfigError

    struct = lab.load_image(images[1], SMALL, name="struct.png")
    value = {"appearance": images[0], "boxes": {"struct.png": [1, 1, 40, 40]},
             "appearance_mask": torch.ones(SMALL, SMALL),
             "structure_mask": torch.ones(SMALL, SMALL)}.get(argument, APP_BOX)
    with pytest.raises(ConfigError) as exc:
        lab.pair(structure=struct, objects=[{"appearance": images[0]}], **{argument: value})
    assert_names(exc, f"'{argument}'", where, "drop objects=")


def test_a_pair_without_its_images_names_the_missing_one(lab, images):
    from e4e_lab.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        lab.pair(images[0], size=SMALL)  # one image and no objects
    assert_names(exc, "'structure'", "objects=[...]")
    with pytest.raises(ConfigError) as exc:
        lab.pair(objects=[{"appearance": images[0]}], size=SMALL)
    assert_names(exc, "'structure'", "lab.pair(structure, objects=[...])")
