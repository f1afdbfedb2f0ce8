"""The run loop: the only place that knows the order of things.

dataset -> (cache | one diffusion pass per image) -> method x every in-run grid point ->
metric counts -> per-image records -> totals -> metrics.json, per_image.parquet, tables,
logger. Re-running into the same directory resumes from the records already written.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from benchmark import distributed
from benchmark.config import ConfigError, InputError, Validated, error_message, is_user_error, json_safe, params_dict, validate
from benchmark.fileio import atomic_path, atomic_write_text, naming_path
from benchmark.provenance import now_iso, provenance
from benchmark.records import ImageRecord, RecordStore, sparse, sum_counts, to_frame
from benchmark.tables import published_numbers, run_protocol, withheld_reasons, write_tables
from benchmark.types import AttentionMaps, Sample, SegmentContext

log = logging.getLogger("benchmark")

RANDOM_WEIGHT_MODELS = ("tiny", "tiny_sdxl")  # benchmark.models.config.TINY_NAMES


@dataclass
class Example:
    """A qualitative example kept for loggers (first grid point; the report reads every
    grid point's prediction from ``examples/``)."""

    image_id: str
    image: torch.Tensor
    label: torch.Tensor
    pred: torch.Tensor


@dataclass
class RunOutcome:
    payload: Dict[str, Any]
    run_dir: Path
    examples: List[Example] = field(default_factory=list)
    #: UNet evaluations run by this invocation (0 when everything was resumed or cached)
    passes_this_run: int = 0


def save_example(out_dir: Path, ex: Example, preds: Sequence[torch.Tensor] = ()) -> None:
    """``<id>_image.png`` (RGB), ``<id>_label.png`` (8-bit class ids, 255 ignored) and one
    16-bit ``<id>_pred_<j>.png`` per grid point j (``preds``; default: ``ex.pred`` as point 0),
    read back by the report's example figures."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ex.image.permute(1, 2, 0).cpu().numpy()).save(out_dir / f"{ex.image_id}_image.png")
    Image.fromarray(ex.label.cpu().numpy().clip(0, 255).astype(np.uint8), mode="L").save(out_dir / f"{ex.image_id}_label.png")
    for j, pred in enumerate(preds or [ex.pred]):
        Image.fromarray(pred.cpu().numpy().clip(0, 65535).astype(np.uint16)).save(out_dir / f"{ex.image_id}_pred_{j}.png")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def fingerprint(v: Validated) -> Dict[str, Any]:
    """Everything that changes per-image numbers (not which images, workers or logging)."""
    dataset = {k: val for k, val in dataclasses.asdict(v.dataset).items() if k not in ("limit", "ids", "num_workers", "on_error")}
    model = dataclasses.asdict(v.model) if dataclasses.is_dataclass(v.model) else dict(v.model or {})
    model = {k: val for k, val in model.items() if k not in ("device", "chunk_size")}
    return json_safe({
        "dataset": dataset,
        "model": model if v.method.cls.needs_diffusion else None,
        "method": {
            "name": v.method.name,
            "extract": dataclasses.asdict(v.method.extract),
            "settings": dataclasses.asdict(v.method.settings),
            "points": [params_dict(p) for p in v.method.points],
        },
        "metric": {"name": v.metric.name, "params": dataclasses.asdict(v.metric.params)},
    })


class Runner:
    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.rank, self.world_size, _ = distributed.world()
        self.v = validate(cfg)  # fails before any work on a bad config
        self.cache = None  # the attention cache of this invocation (cache.dir); keeps its own counts
        self._checked = False

    def check(self) -> None:
        """Every start-up check, before anything is written to the run directory.

        Builds the dataset (reads the split's file list; an empty selection fails here), the
        method, the metric and any candidate filter, and reads the records already in the
        run directory (records of another configuration fail here). Only a config that has
        passed all of them gets its records file, logger or examples written, so a run that
        fails at start leaves the directory as it found it. Errors: ConfigError (the
        dataset's own checks included), RunMismatchError, the data layer's errors."""
        if self._checked:
            return
        seed_everything(self.v.run.seed)
        self._build()
        self._check_selection()
        self.fp = fingerprint(self.v)
        self.store = RecordStore(self.run_dir, self.fp, rank=self.rank)
        self.done = self.store.load_all() if self.v.run.resume else {}
        self.model = self._checked_model()
        self._checked = True

    def _todo(self) -> List[int]:
        """Indices (into ``dataset.ids``) of this rank's images without an "ok" record; an image
        skipped by an earlier run (dataset.on_error=skip) is tried again: its file may be fixed now."""
        ids = list(self.dataset.ids)
        mine = [i for i in range(len(ids)) if i % self.world_size == self.rank]
        return [i for i in mine if ids[i] not in self.done or self.done[ids[i]].status != "ok"]

    def _checked_model(self):
        """The (lazily loaded) model when images are left to compute, after checking that it
        can serve the method's request at ``method.extract.image_size`` (input size, attention
        sides, sides the user named, feature modules: ``LazyModel.check_request``, no weights
        read); None when the method needs no diffusion or nothing is left to compute."""
        if not self.method.needs_diffusion or not self._todo():
            return None
        from benchmark.models import LazyModel

        model = LazyModel(self.v.model)  # weights load on the first cache miss
        self.check_model(model)
        return model

    def check_model(self, model) -> None:
        """Refuse (a user error, exit code 2) a model that cannot serve ``self.request`` at
        ``method.extract.image_size``: ``LazyModel.check_request`` (input size, attention
        sides, the sides the user named in ``self.explicit_sides``, feature modules), then
        each grid point's ``Method.check_captured_sides`` on the sides it will capture."""
        try:
            fitted = model.check_request(self.request, self.v.method.extract.image_size, self.explicit_sides)
            check = getattr(self.method, "check_captured_sides", None)  # plugins without the Method base
            if fitted is not None and check is not None:
                for params in self.v.method.points:
                    check(params, fitted.self_resolutions, fitted.cross_resolutions)
        except ValueError as err:
            if is_user_error(err):
                raise
            raise ConfigError(error_message(err)) from err

    def _check_selection(self) -> None:
        """An empty image selection is a config error, not an empty table."""
        if len(self.dataset.ids):
            return
        d = self.v.dataset
        found = getattr(self.dataset, "found_count", None)
        raise ConfigError(
            f"dataset={d.name}: the selection holds no image (found {found} in the split"
            f"{'' if d.root is None else ' under ' + str(d.root)}; dataset.ids={d.ids!r}, dataset.limit={d.limit!r}). "
            "Select at least one image (dataset.ids=null and dataset.limit=null select every image)."
        )

    # -- building blocks -----------------------------------------------------------------
    def _build(self):
        from benchmark.data import build_dataset

        v = self.v
        try:
            self.dataset = build_dataset(v.dataset)
        except (ValueError, KeyError) as err:  # the dataset's own value checks (ids, columns, ...)
            if is_user_error(err):
                raise
            raise ConfigError(f"dataset={v.dataset.name}: {error_message(err)}") from err
        try:  # the method's and metric's own value checks (void_value, sides, ...): config errors
            self.method = v.method.cls(settings=v.method.settings, extract=v.method.extract)
            self.metric = v.metric.cls(
                num_classes=self.dataset.num_classes,
                class_names=self.dataset.class_names,
                ignore_index=self.dataset.ignore_index,
                params=v.metric.params,
                void_value=self._void_value(),
            )
        except ValueError as err:
            if is_user_error(err):
                raise
            raise ConfigError(error_message(err)) from err
        if getattr(v.method.settings, "candidates", None) == "clip" or getattr(v.method.settings, "captioner", "none") != "none":
            self._clip_filter()  # loads CLIP and/or the captioner now: fail at start if absent
        self.request = None
        self.explicit_sides: List[Any] = []  # sides the user named: checked against the model at start
        if self.method.needs_diffusion:
            request = None
            for p in v.method.points:
                try:  # e.g. method.ca_resolution naming a side the input size lacks
                    r = self.method.attention_request(p)
                except ValueError as err:
                    if is_user_error(err):
                        raise
                    raise ConfigError(error_message(err)) from err
                request = r if request is None else request.union(r)
                explicit = getattr(self.method, "explicit_sides", None)  # plugins without the Method base
                for entry in (explicit(p) if explicit else ()):
                    if entry not in self.explicit_sides:
                        self.explicit_sides.append(entry)
            self.request = request

    def _void_value(self):
        """``method.void_value`` of methods that have one (method=predictions), else None."""
        return getattr(self.v.method.settings, "void_value", None)

    def _context(self, sample: Sample) -> SegmentContext:
        label = sample.label
        valid = label[label != self.dataset.ignore_index]
        ctx = SegmentContext(
            image_id=sample.image_id,
            out_size=(int(label.shape[-2]), int(label.shape[-1])),
            class_names=self.dataset.class_names,
            n_gt_classes=int(torch.unique(valid).numel()),
            image=sample.image,
        )
        settings = self.v.method.settings
        mode = getattr(settings, "candidates", None)
        if mode == "clip":
            ctx.candidates, ctx.caption = self._clip_filter()(sample.image, self.dataset.class_names)
        elif mode is not None:
            from benchmark.candidates import resolve_candidates

            try:
                ctx.candidates, ctx.caption = resolve_candidates(
                    mode, sample.image_id, label, self.dataset.class_names, self.dataset.ignore_index,
                    getattr(settings, "candidates_file", None), getattr(settings, "synonyms", None),
                )
            except (ValueError, KeyError) as err:  # the user's candidates file: not a bug
                raise InputError(error_message(err)) from err
            if mode == "file" and getattr(settings, "captioner", "none") != "none":  # official: file + BLIP captions
                ctx.caption = self._clip_filter().captions_for(sample.image, ctx.candidates, self.dataset.class_names)
        if getattr(self.method, "uses_class_synonyms", False):
            ctx.class_synonyms = self.dataset.class_synonyms
        if self.v.method.name == "predictions":
            from benchmark.prediction_files import load_prediction

            try:
                ctx.external = load_prediction(settings.dir, sample.image_id, ctx.out_size, settings.suffix)
            except ValueError as err:  # the user's prediction file (size, values): not a bug
                raise InputError(error_message(err)) from err
        return ctx

    def _clip_filter(self):
        """The CLIP(+captioner) candidate filter, built once (it loads models)."""
        if getattr(self, "_filter", None) is None:
            from benchmark.clip_filter import ClipCandidateFilter

            self._filter = ClipCandidateFilter(self.v.method.settings)
        return self._filter

    # -- the loop --------------------------------------------------------------------------
    def run(self) -> RunOutcome:
        started = now_iso()
        v = self.v
        self.check()
        store, done = self.store, self.done
        if not v.run.resume:
            if self.rank == 0:
                store.move_aside()
            distributed.barrier()  # no rank may append before the old records are moved
        ids = list(self.dataset.ids)
        mine = [i for i in range(len(ids)) if i % self.world_size == self.rank]
        todo = self._todo()
        if done:
            retried = sum(1 for i in todo if ids[i] in done)
            log.info(
                "resuming: %d of %d images already recorded in %s%s", len(mine) - len(todo), len(mine), self.run_dir,
                f"; retrying {retried} image(s) skipped before" if retried else "",
            )

        model = cache = None
        if todo and self.method.needs_diffusion:
            model = self.model  # checked at start (check()): input size, attention sides, modules
            if v.cache.dir:
                from benchmark.attention.cache import AttentionCache

                cache = self.cache = AttentionCache(v.cache.dir, dtype=v.cache.dtype)
                try:  # before any image: a folder that cannot be made is the user's cache.dir
                    cache.root.mkdir(parents=True, exist_ok=True)
                except OSError as err:
                    raise InputError(
                        f"cache.dir={v.cache.dir}: cannot create the attention cache folder ({err.strerror or err}: "
                        f"{err.filename or cache.root}); set cache.dir to a writable folder, or null to run without a cache"
                    ) from None

        examples: List[Example] = []
        passes_this_run = 0
        store.open()
        try:
            passes_this_run = self._loop(todo, model, cache, store, examples)
        finally:
            store.close()

        # exact reduction: rank 0 gathers every rank's integer per-image records
        my_ids = {ids[i] for i in mine}
        mine_done = {k: r.to_json() for k, r in store.load_all().items() if k in my_ids}
        gathered = distributed.gather_objects(mine_done)
        passes_all = distributed.gather_objects(passes_this_run)
        payload: Dict[str, Any] = {}
        if self.rank == 0:
            records = dict(done)
            for part in gathered:
                records.update({k: ImageRecord.from_json(r) for k, r in part.items()})
            passes_this_run = int(sum(passes_all))
            payload = self._finalize(records, started, model, passes_this_run)
        payload = distributed.broadcast_object(payload)
        return RunOutcome(payload=payload, run_dir=self.run_dir, examples=examples, passes_this_run=passes_this_run)

    def _loop(self, todo: Sequence[int], model, cache, store: RecordStore, examples: List[Example]) -> int:
        from benchmark.data import SkippedSample, make_loader

        v = self.v
        loader = make_loader(self.dataset, list(todo), v.run.batch_size, getattr(v.dataset, "num_workers", 0))
        bar = None
        if v.run.progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), unit="img", desc=f"{v.method.name}/{v.dataset.name}", dynamic_ncols=True)
        passes_total = 0
        try:
            for batch in loader:
                samples = []
                for item in batch:
                    if isinstance(item, SkippedSample):
                        store.append(ImageRecord(item.image_id, "skipped", reason=item.reason))
                        log.warning("skipped image %s: %s", item.image_id, item.reason)
                    else:
                        samples.append(item)
                contexts = [self._context(s) for s in samples]
                maps, passes = self._attention(samples, contexts, model, cache)
                passes_total += sum(passes)
                for sample, ctx, attn, n_passes in zip(samples, contexts, maps, passes):
                    store.append(self._score(sample, ctx, attn, n_passes, examples))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return passes_total

    def _attention(self, samples, contexts, model, cache):
        """Attention of each sample: from the cache, or from one batched diffusion pass."""
        if not self.method.needs_diffusion or not samples:
            return [None] * len(samples), [0] * len(samples)
        extract = self.v.method.extract
        queries = [self.method.queries(ctx) for ctx in contexts]
        maps: List[Optional[AttentionMaps]] = [None] * len(samples)
        keys: List[Optional[str]] = [None] * len(samples)
        if cache is not None:
            from benchmark.models.diffusion import image_key

            for i, (s, q) in enumerate(zip(samples, queries)):
                keys[i] = cache.key(
                    model=model.fingerprint, dtype=str(model.dtype), extract=dataclasses.asdict(extract),
                    request=dataclasses.asdict(self.request), prompts=[dataclasses.asdict(x) for x in q],
                    # the pixels, not only the id: the same id under another dataset root,
                    # preprocessing preset or synthetic seed is another image
                    image_id=s.image_id, image=image_key(s.model_image),
                )
                loaded = cache.load(keys[i])
                maps[i] = loaded.to(model.device) if loaded is not None else None
        missing = [i for i, m in enumerate(maps) if m is None]
        passes = [0] * len(samples)
        if missing:
            from benchmark.models.diffusion import prompt_rows

            fresh = model.get().capture(
                [samples[i].model_image for i in missing], [queries[i] for i in missing], self.request, extract,
                image_ids=[samples[i].image_id for i in missing],  # noise seeded per image id
            )
            for i, m in zip(missing, fresh):
                maps[i] = m
                passes[i] = model.get().passes_per_image(len(set(prompt_rows(queries[i]))), extract)  # distinct rows
                if cache is not None:
                    cache.save(keys[i], m)
                    maps[i] = cache.as_stored(m)  # score what later runs will read back
        return maps, passes

    def _score(self, sample: Sample, ctx: SegmentContext, attn, n_passes: int, examples: List[Example]) -> ImageRecord:
        record = ImageRecord(sample.image_id, "ok", passes=n_passes)
        keep = len(examples) < self.v.run.n_examples
        kept: List[torch.Tensor] = []  # every grid point's prediction of a kept example
        for j, params in enumerate(self.v.method.points):
            pred = self.method.segment(attn, ctx, params)
            if tuple(pred.shape[-2:]) != ctx.out_size:
                raise RuntimeError(
                    f"method {self.v.method.name} returned a {tuple(pred.shape)} label map for image {sample.image_id}; "
                    f"expected {ctx.out_size}"
                )
            pred = pred.to("cpu")
            try:
                counts = self.metric.counts(pred, sample.label, sample.image_id)
            except ValueError as err:
                if self.v.method.name != "predictions":
                    raise  # the harness' own method produced it: a bug
                s = self.v.method.settings  # the user's prediction file holds values the metric refuses
                raise InputError(
                    f"method=predictions: {Path(s.dir) / (sample.image_id + s.suffix)}: {error_message(err)}"
                    + ("" if s.void_value is not None else
                       " (if the files write a value such as 255 for 'no decision', set method.void_value=255)")
                ) from err
            record.counts.append({k: sparse(a) for k, a in counts.items()})
            record.n_pred.append(int(torch.unique(pred).numel()))
            if keep:
                kept.append(pred)
        if keep:
            example = Example(sample.image_id, sample.image, sample.label, kept[0])
            examples.append(example)
            if self.rank == 0:
                with naming_path(self.run_dir / "examples", "example images"):
                    save_example(self.run_dir / "examples", example, kept)
        return record

    # -- results -----------------------------------------------------------------------------
    def _finalize(self, records: Dict[str, ImageRecord], started: str, model, passes_now: int) -> Dict[str, Any]:
        v = self.v
        wanted = set(self.dataset.ids)
        recs = [r for r in records.values() if r.image_id in wanted]
        ok = [r for r in recs if r.status == "ok"]
        shapes = self.metric.state_shapes()
        totals = sum_counts(ok, len(v.method.points), shapes)
        points = [params_dict(p) for p in v.method.points]
        results = []
        for params, state in zip(points, totals):
            results.append({"params": params, "metrics": json_safe(self.metric.compute(state))})
        model_name = getattr(v.model, "name", None) or "none"
        payload: Dict[str, Any] = {
            "method": v.method.name,
            "dataset": v.dataset.name,
            "model": model_name if self.method.needs_diffusion else "none",
            "method_note": getattr(v.method.cls, "note", None),
            "metric": v.metric.name,
            "metric_params": json_safe(dataclasses.asdict(v.metric.params)),
            "class_names": list(self.dataset.class_names),
            "ignore_index": int(self.dataset.ignore_index),
            "void_value": self._void_value(),
            "n_images": len(ok),
            "n_expected": len(self.dataset.ids),
            "skipped": sorted(({"image_id": r.image_id, "reason": r.reason} for r in recs if r.status != "ok"),
                              key=lambda d: d["image_id"]),
            "diffusion_passes": int(sum(r.passes for r in recs)),
            # passes run by this invocation (the rest were resumed or read from the cache)
            "diffusion_passes_this_run": int(passes_now),
            "grid_keys": list(v.method.grid_keys),
            "attention_cache": self._cache_report(),
            "results": results,
            "random_weights": bool(self.method.needs_diffusion and model_name in RANDOM_WEIGHT_MODELS),
            "published": {},  # filled below when the run is comparable with them
            "oracle_keys": [k for k in v.method.grid_keys if k in getattr(v.method.cls, "oracle_keys", ())],
            "image_ids": sorted(r.image_id for r in ok),
        }
        payload["protocol"] = run_protocol(v, v.method.cls, len(ok), len(self.dataset.ids),
                                           getattr(self.dataset, "expected_count", None))
        payload["published"], payload["published_withheld"] = self._published(payload["protocol"])
        if payload["random_weights"]:
            payload["note"] = "pipeline check: random-weight model, numbers are not results"
        device = str(getattr(model, "device", None)) if model is not None else None
        dtype = str(getattr(model, "dtype", None)) if model is not None else None
        payload["provenance"] = provenance(
            OmegaConf.to_container(self.cfg, resolve=True), started, device, dtype
        )
        if self.rank == 0:
            self._write(payload, recs, points)
        return payload

    def _cache_report(self) -> Optional[Dict[str, Any]]:
        """Attention-cache use of this invocation (rank 0's share under torchrun)."""
        if not self.v.cache.dir:
            return None
        cache = self.cache  # None when nothing was left to compute
        stats = {
            "hits": cache.hits if cache else 0,
            "written": cache.writes if cache else 0,
            "bytes_written": cache.bytes_written if cache else 0,
            "dir": self.v.cache.dir,
            "dtype": self.v.cache.dtype,
        }
        if stats["written"]:
            stats["mb_per_image"] = round(stats["bytes_written"] / stats["written"] / 2**20, 2)
        return stats

    def _published(self, protocol: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
        """(published numbers of the experiment, []) when this run has their protocol (method,
        dataset, metric, candidate mode, background protocol, full split); else ({}, the
        reasons they are not shown, which the tables print)."""
        ref = self.v.reference
        if not ref:
            return {}, []
        entry = published_numbers(ref)
        reasons = withheld_reasons(ref, entry, protocol)
        if reasons:
            log.warning("published numbers not shown beside this run: %s", "; ".join(reasons))
            return {}, reasons
        return entry, []

    def _write(self, payload: Dict[str, Any], recs: List[ImageRecord], points: List[Dict[str, Any]]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(payload, indent=2, sort_keys=False))
        with atomic_path(self.run_dir / "per_image.parquet") as tmp:
            to_frame(recs, points).to_parquet(tmp, index=False, engine="pyarrow")
        with naming_path(self.run_dir, "the result tables (table.md, table.csv, table.tex)"):
            write_tables(payload, self.run_dir)


def skipped_summary(payload: Dict[str, Any], shown: int = 3) -> str:
    """`` (1 of 6 SKIPPED, unreadable: img3; ...)`` for the summary line; "" when nothing was skipped."""
    skipped = payload.get("skipped") or []
    if not skipped:
        return ""
    ids = ", ".join(s["image_id"] for s in skipped[:shown]) + (", ..." if len(skipped) > shown else "")
    return (
        f" ({len(skipped)} of {payload.get('n_expected', '?')} SKIPPED, unreadable: {ids}; not in these numbers, "
        "retried on the next run; reasons in metrics.json)"
    )


def print_summary(outcome: RunOutcome) -> None:
    """The human-readable end of a run: the table, and the pipeline-check warning."""
    table = (outcome.run_dir / "table.md").read_text(encoding="utf-8")
    print(table)
    p = outcome.payload
    print(
        f"{p['n_images']} images{skipped_summary(p)}, {p['diffusion_passes']} diffusion passes "
        f"({outcome.passes_this_run} run now), {len(p['results'])} configuration(s) -> {outcome.run_dir}"
    )
    if p.get("random_weights"):
        print("NOTE: PIPELINE CHECK ONLY: random-weight model; these numbers are not segmentation results.")


def write_report(run_dir: Path) -> None:
    """Figures and report.html of a finished run (``run.report``); a plotting failure is
    logged, never fatal: the results are already written."""
    from benchmark.report import report

    try:
        report([run_dir], out=run_dir, plots=True)
    except Exception as err:  # noqa: BLE001 - the numbers are safe on disk; say what failed
        log.error("run.report: could not write the figures / report.html of %s: %s: %s", run_dir, type(err).__name__, err)


def run_benchmark(cfg: DictConfig, run_dir: Path) -> RunOutcome:
    """Run one job (no Hydra needed: tests and scripts call this with a composed config)."""
    from benchmark.loggers import make_logger

    from benchmark.loggers import NullLogger

    runner = Runner(cfg, run_dir)
    runner.check()  # every check passes before the logger or the records write anything
    logger = make_logger(runner.v.logger, run_dir) if runner.rank == 0 else NullLogger()
    failed = True
    try:
        logger.start(OmegaConf.to_container(cfg, resolve=True), runner.v)
        outcome = runner.run()
        if runner.rank == 0 and runner.v.run.report:
            write_report(outcome.run_dir)
        logger.log_outcome(outcome)
        failed = False
        return outcome
    finally:
        logger.finish(failed=failed)
