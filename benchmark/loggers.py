"""Experiment loggers are consumers of the results, never their owners.

``logger=none`` (default) does nothing. ``logger=wandb`` logs the resolved config, the
summary metrics, a per-class IoU table, the results table and a few mask overlays; its
mode defaults to offline (no network) and ``finish`` runs even when the job fails.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple

from benchmark.config import LoggerConfig


class NullLogger:
    def start(self, config: Dict[str, Any], validated: Any) -> None:
        pass

    def log_outcome(self, outcome: Any) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


def _group_name(cfg: LoggerConfig, run_dir: Path) -> str:
    """Runs of one Hydra multirun share the sweep directory: group them by it."""
    if cfg.group:
        return cfg.group
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode is not None and str(hc.mode).endswith("MULTIRUN"):
            return str(Path(hc.sweep.dir).name)
    except (ValueError, ImportError):
        pass
    return run_dir.parent.name or run_dir.name


class WandbLogger:
    def __init__(self, cfg: LoggerConfig, run_dir: Path):
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ImportError("logger=wandb needs the wandb package: pip install 'diffattn-seg-benchmark[wandb]'") from err
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run = None

    def start(self, config: Dict[str, Any], validated: Any) -> None:
        import wandb

        wandb_dir = Path(self.cfg.dir) if self.cfg.dir else self.run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        config = dict(config)
        config.pop("hydra", None)
        name = f"{validated.method.name}_{validated.dataset.name}_{self.run_dir.name}"
        self.run = wandb.init(
            project=self.cfg.project,
            entity=self.cfg.entity,
            mode=self.cfg.mode,
            dir=str(wandb_dir),
            group=_group_name(self.cfg, self.run_dir),
            tags=list(self.cfg.tags),
            name=name,
            config=config,
            reinit="finish_previous",
        )

    def log_outcome(self, outcome: Any) -> None:
        import wandb

        if self.run is None:
            return
        from benchmark.tables import results_frame, scalar_metrics

        payload = outcome.payload
        first = payload["results"][0]["metrics"] if payload["results"] else {}
        summary = {f"metrics/{k}": v for k, v in scalar_metrics(first).items()}
        summary.update({"n_images": payload["n_images"], "diffusion_passes": payload["diffusion_passes"]})
        for k, v in summary.items():
            self.run.summary[k] = v
        frame = results_frame(payload)
        self.run.log({"results": wandb.Table(dataframe=frame.astype(str))})
        per_class = first.get("per_class_IoU") or {}
        if per_class:
            self.run.log({"per_class_IoU": wandb.Table(columns=["class", "IoU"], data=[[k, v] for k, v in per_class.items()])})
        overlays = []
        class_labels = {i: name for i, name in enumerate(payload.get("class_names", []))}
        ignore = int(payload.get("ignore_index", 255))
        class_labels[ignore] = "ignore"
        for ex in outcome.examples[: self.cfg.n_overlays]:
            image = ex.image.permute(1, 2, 0).cpu().numpy()
            if image.shape[:2] != tuple(ex.label.shape):
                continue
            pred, pred_labels = matched_prediction(ex.pred.cpu().numpy(), ex.label.cpu().numpy(), payload, class_labels)
            overlays.append(
                wandb.Image(
                    image,
                    caption=ex.image_id,
                    masks={
                        "prediction": {"mask_data": pred, "class_labels": pred_labels},
                        "ground_truth": {"mask_data": ex.label.cpu().numpy().astype("int32"),
                                         "class_labels": class_labels},
                    },
                )
            )
        if overlays:
            self.run.log({"examples": overlays})

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None


def matched_prediction(
    pred: "np.ndarray", label: "np.ndarray", payload: Dict[str, Any], class_labels: Dict[int, str]
) -> Tuple["np.ndarray", Dict[int, str]]:
    """The prediction (H, W) int32 as class ids with its W&B ``class_labels``.

    Open-vocabulary predictions are class ids already. Unsupervised segment ids are shown as
    the class the metric matched them to (``benchmark.visualize.matched_classes``: this
    image's Hungarian match, or the dataset-level assignment of the first grid point), so
    prediction and ground-truth masks share colours; unmatched segments get one extra id,
    "unmatched segment"."""
    import numpy as np

    from benchmark.visualize import matched_classes

    metric = payload.get("metric", "")
    if not metric.startswith("hungarian"):
        return pred.astype("int32"), class_labels
    num_classes = len(payload.get("class_names", []))
    results = payload.get("results") or [{}]
    mapping = matched_classes(
        pred, label, metric, num_classes, int(payload.get("ignore_index", 255)),
        (results[0].get("metrics") or {}).get("assignment"),
    )
    unmatched = max(class_labels) + 1
    out = np.full(pred.shape, unmatched, dtype="int32")
    for segment, cls in mapping.items():
        out[pred == segment] = cls
    return out, {**class_labels, unmatched: "unmatched segment"}


def make_logger(cfg: LoggerConfig, run_dir: Path):
    # mode=disabled still goes through wandb (its calls become no-ops) so that tests of
    # the disabled path exercise the same code as real runs
    return WandbLogger(cfg, run_dir) if cfg.name == "wandb" else NullLogger()
