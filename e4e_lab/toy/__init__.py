"""A procedural toy world and a small diffusion model trained on it, for offline use.

`e4e_lab.toy.world` draws seeded creatures (fish, birds, dogs) whose parts, part colours
and keypoints are known exactly, so that appearance transfer can be seen and measured
without Stable Diffusion weights.

Modules, grouped by prefix (each group's first module is its API and re-exports the rest):

- the world: `world` (`Sample`, `sample()`, `pair()`, the seed split), `world_species`
  (parts, keypoints and the shape of each species), `world_scenes` (backgrounds, part
  colours), `world_render` (posing, rasterising, shading, ground truth from part maps);
- the model: `model` (its configuration, building, saving and manifest), `examples`
  (the example pairs in `example/toy/`);
- training, `python -m e4e_lab.toy.train`: `train` (CLI, `train()`), `train_config`,
  `train_data` (the creature stream), `train_loop` (the `Trainer`), `train_checkpoints`,
  `train_phases` (VAE and UNet phases, their losses), `train_outputs` (pipeline folder,
  manifest, preview);
- quality: `quality` (`evaluate_toy()` over held-out pairs), `quality_images` (part
  colours, background, silhouette), `quality_pck` (DIFT keypoint PCK), `quality_report`
  (rows and summaries).
"""
