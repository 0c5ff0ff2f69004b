"""A procedural toy world and a small diffusion model trained on it, for offline use.

`e4e_lab.toy.world` draws seeded creatures (fish, birds, dogs) whose parts, part colours
and keypoints are known exactly, so that appearance transfer can be seen and measured
without Stable Diffusion weights.
"""
