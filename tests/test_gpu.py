"""The stages on CUDA (marker ``gpu``; skipped where ``torch.cuda.is_available()`` is False).

Tiny model, 64 px, the short schedule of ``fast_config``: a few seconds on a GPU.
``benchmarks/gpu_check.sh`` runs them with ``pytest -m gpu tests/test_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch

from e4e_lab.method.config import INJECTION_MODES
from e4e_lab.method.images import load_image
from e4e_lab.method.inversion import invert, reconstruct

from conftest import SMALL

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="no CUDA device (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def cuda_models(_offline_env):
    """The tiny model on CUDA in its default CUDA dtype (fp16)."""
    from e4e_lab.models import load_pipeline

    return load_pipeline("tiny", device="cuda")


@pytest.fixture(scope="module")
def cuda_models_fp32(_offline_env):
    from e4e_lab.models import load_pipeline

    return load_pipeline("tiny", device="cuda", dtype=torch.float32)


def _lab(models, tmp_path):
    from e4e_lab.session import Lab

    return Lab(models=models, cache_dir=tmp_path / "cache")


def test_transfer_fp16_on_cuda_is_finite(cuda_models, build_pair, fast_config, tmp_path):
    assert cuda_models.dtype == torch.float16 and cuda_models.device.type == "cuda"
    lab = _lab(cuda_models, tmp_path)
    res = lab.transfer(build_pair(lab), fast_config)
    assert res.image.shape == (3, SMALL, SMALL)
    assert torch.isfinite(res.image).all() and torch.isfinite(res.latents).all()


@pytest.mark.parametrize("mode", INJECTION_MODES)
def test_every_injection_mode_with_guidance(cuda_models, build_pair, fast_config, tmp_path,
                                            mode):
    lab = _lab(cuda_models, tmp_path)
    cfg = fast_config.replace(injection=mode, guidance=2.5)
    res = lab.transfer(build_pair(lab), cfg)
    assert torch.isfinite(res.image).all(), mode


def test_inversion_round_trip_fp32_on_cuda(cuda_models_fp32, images, fast_config, monkeypatch):
    """Exact in fp32, once TF32 is off: cuDNN convolutions use TF32 by default on Ampere
    and later, and the batched inversion and the one-step reconstruction then differ by
    about 1e-3 per noise prediction (0.04 in x_0 after 20 steps, measured on an H200)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    img = load_image(images[0], SMALL)
    (inv,) = invert(cuda_models_fp32, [img], fast_config.inversion)
    assert not (inv.zs[-1] == 0).all()
    for start in (0, 6):
        x0 = reconstruct(cuda_models_fp32, inv, start=start).cpu()
        assert torch.allclose(x0, inv.x0, atol=1e-4, rtol=0), (start, (x0 - inv.x0).abs().max())


def test_dift_field_on_cuda(cuda_models, images):
    from e4e_lab.models.dift import DiftSettings, dift_field

    target, reference = (load_image(im, SMALL, name=f"im{i}") for i, im in enumerate(images))
    fld = dift_field(cuda_models, target, reference, settings=DiftSettings(ensemble=2))
    assert fld.index.shape == fld.score.shape and fld.index.numel() > 0
    assert (fld.index >= 0).all() and torch.isfinite(fld.score).all()


def test_two_identical_runs_are_bit_equal(cuda_models, build_pair, fast_config, tmp_path):
    lab = _lab(cuda_models, tmp_path)
    pair = build_pair(lab)
    first = lab.transfer(pair, fast_config)
    again = _lab(cuda_models, tmp_path / "other").transfer(pair, fast_config)
    assert torch.equal(first.latents, again.latents) and torch.equal(first.image, again.image)


@pytest.mark.parametrize("mode", ["feature", "v", "cross-image"])
def test_denoising_loop_never_waits_for_the_gpu(cuda_models, images, fast_config, tmp_path,
                                                mode):
    """No host sync from the end of the first denoising step to the last one: CUDA's
    sync debug mode raises on any synchronising call (``.item()``, a blocking copy...)."""
    lab = _lab(cuda_models, tmp_path)
    pair = lab.pair(images[0], images[1], size=SMALL, mask="box", appearance_box=(4, 4, 60, 60),
                    structure_box=(8, 2, 62, 58))
    last = fast_config.denoising_steps - 1

    def watch(event):
        torch.cuda.set_sync_debug_mode("error" if event.step < last else "default")

    try:
        res = lab.transfer(pair, fast_config.replace(injection=mode), callback=watch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(res.latents).all()
