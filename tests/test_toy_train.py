"""The toy model and its training script, on a very small configuration.

One interrupted CLI run and its resumption (3 VAE steps + 4 UNet steps in all, 64 px,
narrow widths) feed the tests of checkpoints, resuming, the saved pipeline, the manifest
and the scaling factor. One torch thread: on a shared 2-core machine two threads can be
several times slower.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from e4e_lab.toy import train as toy_train
from e4e_lab.toy import train_phases
from e4e_lab.toy import world
from e4e_lab.toy.model import (TOY_MARKER, ToyModelConfig, build_text_encoder, build_unet,
                               build_vae, fp16_megabytes, is_toy_folder, verify_manifest)

TINY_WIDTHS = json.dumps({
    "vae_channels": [8, 16, 16], "vae_norm_groups": 4, "unet_channels": [16, 16, 32, 32],
    "unet_norm_groups": 4, "unet_head_dim": 16, "text_hidden": 32, "text_intermediate": 64,
})
SIZE = 64


def cli_args(out, *extra: str) -> list[str]:
    return ["--out", str(out), "--size", str(SIZE), "--model-config", TINY_WIDTHS,
            "--batch-size", "3", "--workers", "0", "--threads", "1", "--vae-steps", "3",
            "--unet-steps", "4", "--checkpoint-every", "2", "--quiet", "--no-preview", *extra]


class Interrupt:
    """Wraps the diffusion loss and presses Ctrl-C on its ``at``-th call."""

    def __init__(self, loss, at: int) -> None:
        self.loss, self.at, self.calls = loss, at, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.loss(*args, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A CLI run interrupted during UNet step 3, then resumed with ``--resume``.

    Every seed that reaches ``world.sample`` is recorded.
    """
    out = tmp_path_factory.mktemp("toy-run")
    seeds: list[int] = []
    real_sample = world.sample

    def recording_sample(seed, *args, **kwargs):
        seeds.append(seed)
        return real_sample(seed, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(world, "sample", recording_sample)
        # patched where the UNet phase looks it up
        mp.setattr(train_phases, "diffusion_loss", Interrupt(train_phases.diffusion_loss, at=3))
        with pytest.raises(KeyboardInterrupt):
            toy_train.main(cli_args(out))
        interrupted = sorted(p.name for p in (out / "checkpoints").iterdir())
        mp.setattr(train_phases, "diffusion_loss", train_phases.diffusion_loss.loss)
        with pytest.raises(FileExistsError, match="--resume"):
            toy_train.main(cli_args(out))
        assert toy_train.main(cli_args(out, "--resume")) == 0
    manifest = json.loads((out / "pipeline" / "MANIFEST.json").read_text())
    return {"out": out, "seeds": seeds, "interrupted": interrupted, "manifest": manifest}


def test_an_interrupted_run_leaves_checkpoints_and_resumes_to_the_asked_steps(run):
    assert "unet-0000002" in run["interrupted"] and "vae-done" in run["interrupted"]
    phases = run["manifest"]["phases"]
    assert phases["vae"]["steps_done"] == 3 and phases["vae"]["resumed_from_step"] is None
    assert phases["unet"]["steps_done"] == 4 and phases["unet"]["resumed_from_step"] == 2
    assert all(phases[p]["wall_seconds"] > 0 and np.isfinite(phases[p]["final_loss"])
               for p in ("vae", "unet"))
    # the optimizer and the EMA continued from the checkpoint: 2 + 2 updates, not 2
    last = run["out"] / "checkpoints" / "unet-0000004"
    optimizer = torch.load(last / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {4.0}
    assert json.loads((last / "ema.json").read_text())["unet"]["optimization_step"] == 4


def test_the_pipeline_folder_loads_through_the_library(run, tmp_path):
    from e4e_lab.models import load_pipeline

    folder = run["out"] / "pipeline"
    assert is_toy_folder(folder) and "knows nothing else" in (folder / TOY_MARKER).read_text()
    models = load_pipeline(str(folder), device="cpu")
    assert models.dtype == torch.float32 and models.vae_scale_factor == 4
    assert models.default_size == SIZE and models.unet.config.sample_size == SIZE // 4
    assert type(models.scheduler).__name__ == "DDIMScheduler"
    assert models.scheduler.config.timestep_spacing == "leading"
    with torch.no_grad():
        cond, _ = models.pipe.encode_prompt("a photo of a dog", "cpu", 1, False)
        out = models.unet(torch.randn(1, 4, 16, 16), 261, cond).sample
    assert cond.shape == (1, 77, 32) and torch.isfinite(out).all()
    preview = toy_train.write_preview(models.pipe, tmp_path / "preview.png", models.device,
                                      per_species=1, steps=2)
    from PIL import Image
    assert Image.open(preview).size == (SIZE, SIZE * len(world.SPECIES))


def test_the_time_cap_stops_a_phase_early_and_says_so(tmp_path):
    cfg = toy_train.TrainConfig(
        out=tmp_path, model=ToyModelConfig.from_json(TINY_WIDTHS).replace(image_size=SIZE),
        vae_steps=1, unet_steps=5, vae_batch_size=2, unet_batch_size=2, threads=1,
        max_minutes=(None, 0.0), scale_images=4, preview=False, progress=False)
    phases = toy_train.train(cfg)["phases"]
    assert phases["vae"]["steps_done"] == 1 and not phases["vae"]["stopped_early"]
    assert phases["unet"]["steps_done"] == 0 and phases["unet"]["stopped_early"]
    assert verify_manifest(tmp_path / "pipeline") == []


def test_the_manifest_verifies_and_catches_tampering(run, tmp_path):
    manifest = run["manifest"]
    assert " -m e4e_lab.toy.train --out " in manifest["command"]
    assert manifest["command"].endswith("--no-preview --resume")
    assert manifest["device"].startswith("cpu")
    assert {"torch", "diffusers"} <= set(manifest["versions"])
    assert "unet/diffusion_pytorch_model.safetensors" in manifest["files"]
    assert verify_manifest(run["out"] / "pipeline") == []

    folder = shutil.copytree(run["out"] / "pipeline", tmp_path / "pipeline")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (folder / "vae" / "config.json").unlink()
    (folder / "extra.txt").write_text("x")
    problems = verify_manifest(folder)
    assert any(p.startswith("unet/diffusion_pytorch_model.safetensors: sha256") for p in problems)
    assert "vae/config.json: missing" in problems and "extra.txt: not in the manifest" in problems
    (folder / "MANIFEST.json").write_text("{")
    assert verify_manifest(folder)[0].startswith("MANIFEST.json: unreadable")


def test_the_scaling_factor_comes_from_the_training_latents(run):
    from diffusers import AutoencoderKL

    scale = run["manifest"]["scaling_factor"]
    vae = AutoencoderKL.from_pretrained(run["out"] / "pipeline" / "vae", torch_dtype=torch.float32)
    assert vae.config.scaling_factor == pytest.approx(scale) and scale != 1.0
    batch = world.render_batch(range(100, 148), size=SIZE)
    images = toy_train.images_to_tensor(torch.from_numpy(batch.images), torch.device("cpu"))
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode()
    assert float(latents.std() * scale) == pytest.approx(1.0, abs=0.25)


def test_training_draws_only_training_seeds(run):
    seeds = run["seeds"]
    assert len(seeds) >= 3 * 3 + 4 * 3 and len(set(seeds)) > len(seeds) // 2
    assert all(s in world.TRAIN_SEEDS and not world.is_heldout(s) for s in seeds)


def test_the_stream_is_balanced_seeded_and_per_worker(monkeypatch):
    monkeypatch.setattr(world, "TRAIN_SEEDS", range(5000, 5100))
    loader = toy_train.make_loader(toy_train.CreatureStream((7, 1, 0), 32), batch_size=6,
                                   workers=2, device=torch.device("cpu"))
    batches = [b for b, _ in zip(loader, range(4))]
    seeds = [s for b in batches for s in b["seed"].tolist()]
    assert all(5000 <= s < 5100 for s in seeds)
    for b in batches:  # each batch comes from one worker and holds two of each species
        assert sorted(b["prompt"]) == sorted(f"a photo of a {s}" for s in world.SPECIES * 2)
        assert b["image"].shape == (6, 32, 32, 3) and b["image"].dtype == torch.uint8
    assert batches[0]["seed"].tolist() != batches[1]["seed"].tolist()  # two workers' streams
    again = iter(toy_train.CreatureStream((7, 1, 0), 32))
    assert [next(again)["seed"] for _ in range(6)] == batches[0]["seed"].tolist()


def test_the_default_model_has_sd15s_layout_and_fits_28_mb():
    cfg = ToyModelConfig()
    unet, vae, text = build_unet(cfg), build_vae(cfg), build_text_encoder(cfg)
    total = sum(p.numel() for m in (unet, vae, text) for p in m.parameters())
    assert fp16_megabytes(total) <= 28.0
    assert unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert unet.config.up_block_types == ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    assert [len(b.attentions) for b in unet.up_blocks[1:]] == [3, 3, 3]
    assert cfg.latent_size == 32 and unet.config.sample_size == 32
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 3
    assert text.config.vocab_size == 49408 and unet.config.cross_attention_dim == 64


def test_bad_model_settings_are_refused():
    with pytest.raises(ValueError, match="unknown toy model setting"):
        ToyModelConfig.from_json('{"unet_width": 3}')
    with pytest.raises(ValueError, match="multiple of"):
        ToyModelConfig(image_size=100)
