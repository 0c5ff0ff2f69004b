"""Running several methods over a folder of pairs and scoring them.

A pairs folder holds ``pairs.json`` (a list of ``{"name", "appearance", "structure",
"domain"}``, paths relative to the folder) and optionally ``boxes.json`` (see
``example/``; read by :func:`e4e_lab.io.formats.read_pairs_folder`). Every method runs on the same cached inversions and seed; each result
is scored with :mod:`e4e_lab.analysis.metrics`; :mod:`e4e_lab.evaluation.report` writes
``results.csv``, the images under ``images/<pair>/<method>.png`` and a self-contained
plotly HTML report.

Under ``accelerate launch --multi_gpu --num_processes N`` the pairs are split across N
processes (one GPU each; CPU processes when no GPU is visible); every process writes
its share and the main process merges them into one CSV and report.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..analysis import metrics
from ..errors import ConfigError, ModelUnavailableError
from ..io.formats import PairSpec, read_pairs_folder
from ..io.outputs import (EVAL_FILES, OutputError, OutputExistsError, OutputTransaction,
                          writing_into)
from ..method.config import TransferConfig
from .report import read_csv, save_images, write_csv, write_report

log = logging.getLogger(__name__)

METHODS = ("feature", "v", "kv", "cross-image")
PAINT_BY_EXAMPLE = "paint-by-example"
ALL_METHODS = METHODS + (PAINT_BY_EXAMPLE,)
METHOD_LABELS = {"feature": "Eye-for-an-eye (feature)", "v": "Eye-for-an-eye (V)",
                 "kv": "Eye-for-an-eye (KV)", "cross-image": "Cross-Image Attention",
                 PAINT_BY_EXAMPLE: "Paint-by-Example"}
# direction of each score of :func:`score` (see e4e_lab/analysis/metrics.py)
HIGHER_IS_BETTER = {"ssim": True, "edge_ssim": True, "histogram_distance": False,
                    "part_colour_distance": False, "part_agreement": True,
                    "cycle_consistency": True}
# scores of the pair's DIFT correspondence, not of a method's image: equal for every method
PAIR_LEVEL_SCORES = ("part_agreement", "cycle_consistency")


def scoring_parts(lab, pair, config: TransferConfig, k_parts: int = 4):
    """The DIFT parts and field the part metrics use (:func:`e4e_lab.analysis.parts.pair_parts`
    with at most ``k_parts`` parts); they depend on the pair and the DIFT settings, not
    on the method, so one computation serves every method of a pair."""
    from ..analysis.parts import pair_features, pair_parts

    feats = pair_features(lab, pair, config)
    return pair_parts(lab, pair, config, min(k_parts, feats.max_k), features=feats)


def image_scores(image: torch.Tensor, pair, parts) -> dict[str, float]:
    """The metrics of one method's (3, H, W) result image."""
    return {
        "ssim": metrics.ssim(image, pair.structure.pixels),
        "edge_ssim": metrics.edge_ssim(image, pair.structure.pixels),
        "histogram_distance": metrics.histogram_distance(
            image, pair.appearance.pixels, pair.structure_mask, pair.appearance_mask),
        "part_colour_distance": metrics.part_colour_distance(
            image, pair.appearance.pixels, parts.parts, parts.field),
    }


def pair_scores(pair, parts) -> dict[str, float]:
    """The :data:`PAIR_LEVEL_SCORES`: of the pair's DIFT correspondence, one per pair."""
    feats = parts.features
    return {"part_agreement": parts.agreement,
            "cycle_consistency": metrics.cycle_consistency(
                feats.target, feats.reference, pair.structure_mask, pair.appearance_mask)}


def score(image: torch.Tensor, pair, lab, config: TransferConfig, k_parts: int = 4,
          parts=None) -> dict[str, float]:
    """The weights-free metrics of one result image (see :mod:`e4e_lab.analysis.metrics`).

    ``parts`` (from :func:`scoring_parts`) skips recomputing the pair's DIFT features.
    """
    parts = parts if parts is not None else scoring_parts(lab, pair, config, k_parts)
    return {**image_scores(image, pair, parts), **pair_scores(pair, parts)}


@dataclass
class MethodResult:
    """One method's output on a pair: the image, its scores and how long it took."""

    method: str
    image: torch.Tensor  # (3, H, W) in [0, 1]
    seconds: float  # the method alone (inversion and scoring excluded)
    scores: dict[str, float]
    config: TransferConfig
    result: object | None = None  # the TransferResult (None for Paint-by-Example)

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)


def check_methods(methods) -> tuple[str, ...]:
    methods = tuple(methods)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown or not methods:
        raise ConfigError("methods", list(methods), f"one or more of {', '.join(ALL_METHODS)}")
    return methods


def load_baseline(lab):
    """Paint-by-Example for a session: the tiny random instance when the session's
    weights are random, the real weights with a real model. No Paint-by-Example was
    trained in the toy world, so the toy model has none (ModelUnavailableError)."""
    from .baselines import PBE_MODEL, load_paint_by_example

    if lab.models.is_toy:
        raise ModelUnavailableError(
            "Paint-by-Example has no toy-world model (none was trained on the synthetic "
            "creatures): leave paint-by-example out of the methods with the toy model")
    return load_paint_by_example("tiny" if lab.is_tiny else PBE_MODEL, lab.models.device,
                                 lab.models.dtype)


def compare_methods(lab, pair, methods=METHODS, base: TransferConfig | None = None,
                    progress: Callable[[int, int, str, "MethodResult | None"], None] | None = None,
                    cancel=None, pbe=None, inversion_progress=None, k_parts: int = 4,
                    pbe_steps: int = 50, step_callback=None) -> list[MethodResult]:
    """Run ``methods`` on one pair with the same cached inversions and seed, and score them.

    Eye-for-an-eye modes and Cross-Image Attention are ``lab.transfer`` with
    ``base.replace(injection=method)``; ``"paint-by-example"`` repaints the structure's
    mask (``pbe``: a loaded :class:`~e4e_lab.evaluation.baselines.PaintByExample`, loaded with
    :func:`load_baseline` when not given). The pair is inverted once, outside the
    timings, and its DIFT parts are computed once for every method's scores.

    ``progress(index, total, method, result)`` is called as each method starts (result
    None) and ends; ``step_callback`` gets every denoising step's
    :class:`~e4e_lab.method.transfer.StepEvent` of the transfers. ``cancel`` (a
    ``threading.Event``) is checked between methods and between denoising steps; once
    set, the methods finished so far are returned.
    """
    from ..errors import TransferCancelled
    from .baselines import paint_by_example

    methods = check_methods(methods)
    base = base or TransferConfig()
    lab.invert([pair.appearance, pair.structure], base, progress=inversion_progress)
    if PAINT_BY_EXAMPLE in methods and pbe is None:
        pbe = load_baseline(lab)
    parts = scoring_parts(lab, pair, base, k_parts)
    per_pair = pair_scores(pair, parts)  # the same for every method: computed once
    done: list[MethodResult] = []
    for n, method in enumerate(methods):
        if cancel is not None and cancel.is_set():
            break
        if progress is not None:
            progress(n, len(methods), method, None)
        t0 = time.perf_counter()
        if method == PAINT_BY_EXAMPLE:
            cfg, result = base, None
            image = paint_by_example(pbe, pair, seed=base.seed, steps=pbe_steps)
        else:
            cfg = base.replace(injection=method)
            try:
                result = lab.transfer(pair, cfg, cancel=cancel, callback=step_callback)
            except TransferCancelled:
                break
            image = result.image
        seconds = time.perf_counter() - t0
        done.append(MethodResult(method, image, seconds,
                                 {**image_scores(image, pair, parts), **per_pair},
                                 cfg, result))
        if progress is not None:
            progress(n + 1, len(methods), method, done[-1])
    return done


def best_methods(results: list[MethodResult]) -> dict[str, str]:
    """For each per-method score, the method with the best value (by
    :data:`HIGHER_IS_BETTER`; pair-level scores are left out)."""
    best = {}
    for metric, higher in HIGHER_IS_BETTER.items():
        if metric in PAIR_LEVEL_SCORES:
            continue
        finite = [r for r in results if r.scores.get(metric) == r.scores.get(metric)]
        if finite:
            pick = max if higher else min
            best[metric] = pick(finite, key=lambda r: r.scores[metric]).method
    return best


def evaluate(lab, pairs: list[PairSpec], boxes: dict | None, methods=METHODS,
             base: TransferConfig | None = None, mask: str = "auto", size: int | None = None,
             progress=None, pbe=None
             ) -> tuple[list[dict], dict[tuple[str, str], torch.Tensor]]:
    """Run every method on every pair (:func:`compare_methods`); returns
    (rows, {(pair, method): result image}). ``pbe``: a loaded Paint-by-Example (else
    loaded here when ``methods`` asks for it)."""
    methods = check_methods(methods)
    base = base or TransferConfig()
    rows, images = [], {}
    if pbe is None and PAINT_BY_EXAMPLE in methods:
        pbe = load_baseline(lab)
    for spec in pairs:
        pair = lab.pair(spec.appearance, spec.structure, boxes=boxes, mask=mask, size=size)
        images[(spec.name, "structure")] = pair.structure.pixels
        images[(spec.name, "appearance")] = pair.appearance.pixels

        def report(_n, _total, method, result, name=spec.name):
            if result is not None and progress is not None:
                progress(name, method)

        for r in compare_methods(lab, pair, methods, base.replace(domain=spec.domain),
                                 progress=report, pbe=pbe):
            rows.append({"pair": spec.name, "method": r.method, "seconds": r.seconds,
                         "tiny_model": lab.is_tiny, **r.scores})
            images[(spec.name, r.method)] = r.image
    return rows, images


def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)  # torch >= 2.6; CUDA only before
    return acc.is_available() if acc is not None else torch.cuda.is_available()


def run_distributed(lab_factory, pairs_dir: str | Path, out_dir: str | Path,
                    methods=METHODS, base: TransferConfig | None = None, mask: str = "auto",
                    size: int | None = None, progress=None, overwrite: bool = False
                    ) -> Path | None:
    """Evaluate a pairs folder, splitting pairs across ``accelerate`` processes.

    Each process handles pairs ``index::num_processes`` and writes
    ``results.part{index}.csv``; the main process merges them into ``results.csv`` and
    ``report.html`` (thumbnails of its own share; scores of all). Returns the CSV path on
the main process, None on the others.

    The evaluation is one output transaction (:class:`e4e_lab.io.outputs.OutputTransaction`):
    the main process claims ``out_dir`` (refused if it holds an evaluation, unless
    ``overwrite``), every process writes into its staging folder, and the finished
    evaluation is moved into place at the end; a failed run leaves ``out_dir`` as it was.
    """
    try:
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        # with no accelerator, processes started by torchrun (`accelerate launch --multi_gpu`)
        # only join one group (gloo) when told cpu=True; without it each is "0 of 1"
        cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not _has_accelerator()
        state = PartialState(cpu=cpu)
        index, world = state.process_index, state.num_processes
    except ImportError:  # accelerate is a dependency, but keep single-process use working
        state, index, world = None, 0, 1
    pairs, boxes = read_pairs_folder(pairs_dir)
    tx, stage = _claim_output(out_dir, overwrite, index, world)
    try:
        # the main process loads the models first: a first use builds (or downloads) them
        # into the shared cache; transformers' save_pretrained writes no weights on rank != 0
        with state.main_process_first() if state is not None else nullcontext():
            lab = lab_factory(index)
            pbe = load_baseline(lab) if PAINT_BY_EXAMPLE in check_methods(methods) else None
        share = pairs[index::world]
        log.info("process %d of %d evaluates pairs: %s", index, world,
                 ", ".join(p.name for p in share))
        rows, images = evaluate(lab, share, boxes, methods, base, mask, size, progress, pbe)
        with writing_into(out_dir, "write the evaluation into"):
            write_csv(stage / f"results.part{index}.csv", rows)
            save_images(stage, images)
        if state is not None:
            state.wait_for_everyone()
        if tx is None:  # not the main process
            return None
        with writing_into(tx.out, "write the evaluation into"):
            merged = []
            for k in range(world):
                part = stage / f"results.part{k}.csv"
                merged.extend(read_csv(part))
                part.unlink()
            write_csv(stage / "results.csv", merged)
            write_report(stage / "report.html", merged, lab.banner)
        return tx.commit() / "results.csv"
    finally:
        if tx is not None:
            tx.close()  # removes the staging folder unless committed


def _claim_output(out_dir, overwrite: bool, index: int, world: int):
    """The main process's :class:`OutputTransaction` (None on the others) and the staging
    folder every process writes into (broadcast from the main process)."""
    tx, shared = None, [None, None]  # [staging folder, or the main process's refusal]
    if index == 0:
        tx = OutputTransaction(out_dir, overwrite, EVAL_FILES)
        try:
            shared[0] = str(tx.begin())
        except OutputError as exc:
            if world == 1:
                raise
            shared[1] = str(exc)
    if world > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(shared)
    if shared[1] is not None:
        raise OutputExistsError(shared[1])
    return tx, Path(shared[0])
