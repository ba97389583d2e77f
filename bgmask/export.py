"""A run folder as a model other tools load: timm / Hugging Face layout, a model card, ``load_classifier``.

``python -m bgmask.export RUN_DIR --out DIR`` writes ``config.json`` (timm's hub config: ``architecture``,
``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg`` with the run's evaluation transform), the
weights as ``model.safetensors`` and a ``README.md`` model card (:mod:`bgmask.model_card`). The folder appears whole
or not at all (written beside it, renamed at the end).

Two layouts, decided by what the model is:

* **timm**: a plain classifier (baseline, early masking, DFR, GroupDRO) whose head timm's own model expresses —
  ConvNeXt (timm's ``head.norm`` → ``head.fc``), ViTs with the ``cls`` (``global_pool='token'``) or ``mean`` head
  (``global_pool='avg', fc_norm=False``). Written by ``timm.models.save_for_hf`` from a timm model holding the run's
  weights, whose logits are checked against the run's model before anything is written; it loads with
  ``timm.create_model("local-dir:DIR", pretrained=True)``.
* **bgmask**: late masking (the features are masked between the backbone and the pooling, which no timm model
  does) and the ViT ``cls_mean`` head (concat(CLS, mean patch tokens): no timm ``global_pool``). The safetensors hold
  the run's own model; :func:`load_classifier` rebuilds it (``forward(images, masks)`` for late masking).

Both carry a ``bgmask`` block in ``config.json`` (format version, layout, strategy, what input the model needs, the
late-masking settings) that :func:`load_classifier` and ``python -m bgmask.predict`` read.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD
from torch import nn

from bgmask.errors import BgmaskError, ExportError
from bgmask.infra.argparsing import parser_from_doc

FORMAT = "bgmask-export"
FORMAT_VERSION = 1
CHECKPOINTS = ("best", "last")
SPEC_FIELDS = ("arch", "num_classes", "image_size", "head_norm")


@dataclasses.dataclass
class Export:
    """What an export folder describes (its ``config.json``'s ``bgmask`` block, plus the transform)."""

    layout: str  # timm | bgmask
    strategy: str
    needs: str  # what predict must give the model: images | masked images | images and masks
    spec: dict  # the ModelSpec fields that shape the network
    late: dict | None  # late masking: second_last, masked_mean, mask_downsample, mask_area_threshold
    transform: dict  # image_size, crop_pct, interpolation, mean, std
    label_names: list[str]


def needs_of(strategy: str) -> str:
    return {"late": "images and masks", "early": "masked images"}.get(strategy, "images")


def checkpoint_path(run_dir: Path, which: str) -> Path:
    """``best.pt``, else ``last.pt`` (DFR and probe runs keep the last only), or an error naming what is there."""
    if which not in CHECKPOINTS:
        raise ExportError(f"--checkpoint must be one of {CHECKPOINTS}, got {which!r}")
    order = ["best.pt", "last.pt"] if which == "best" else ["last.pt"]
    path = next((run_dir / name for name in order if (run_dir / name).is_file()), None)
    if path is None or not (run_dir / "results.json").is_file():
        raise ExportError(f"{run_dir} is not a finished run folder (it needs results.json and {' or '.join(order)}); "
                          f"point at a run's --snapshot_dir.")
    return path


def run_config(run_dir: Path):
    """The run's ``(TrainConfig, Strategy)`` from its ``args.yaml``, as the entry points parse it."""
    from bgmask import cli, strategies

    args = run_dir / "args.yaml"
    if not args.is_file():
        raise ExportError(f"{run_dir} has no args.yaml: export needs the run's settings (written at its start).")
    return cli.parse_config(strategies.names(), [], settings=cli.saved_settings(args))


def label_names(data_path: str, num_classes: int) -> list[str]:
    """CUB's class names from ``classes.txt`` when the data is at hand, else ``class_000``, ... (stated in the card)."""
    from bgmask.data.cub import CUBIndex

    try:
        names = list(CUBIndex.load(data_path).class_names)
    except Exception:  # the data need not be where the run found it: the export stays usable without names
        names = []
    return names if len(names) == num_classes else [f"class_{k:03d}" for k in range(num_classes)]


def run_model(cfg, strategy, state: dict, path: Path, head: str | None) -> nn.Module:
    """The run's model with the checkpoint's weights, in eval mode on CPU (``head``: one probe head's model)."""
    from bgmask.models import create_classifier
    from bgmask.models.heads import parse_heads
    from bgmask.models.probes import ProbeHeads
    from bgmask.models.weights import weights_identity
    from bgmask.run.model import load_model_state

    num_classes = state["num_classes"]
    frozen = state.get("weights_identity") is not None
    spec = cfg.model.spec(num_classes, cfg.model.image_size)
    if not frozen:  # every weight is in the checkpoint
        spec = dataclasses.replace(spec, pretrained=False, pretrained_path=None)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(cfg.run.seed)  # a frozen random backbone is rebuilt from the run's seed
        classifier = create_classifier(spec)
    if frozen:
        identity = weights_identity(spec, classifier.backbone.weights_source, cfg.run.seed)
        if identity != state["weights_identity"]:
            raise ExportError(f"{path} holds a head trained on a frozen backbone from {state['weights_identity']}, "
                              f"but the backbone available here is {identity}: make the run's --pretrained_path "
                              f"(or the timm cache) available, then export again.")
    opts = cfg.strategy_options
    if getattr(opts, "mask_source", None) == "segmenter":  # the segmenter is no part of the classifier
        cfg = dataclasses.replace(cfg, strategy_options=dataclasses.replace(opts, mask_source="precomputed"))
    model = strategy.wrap_model(cfg, classifier)
    if cfg.model.probe_heads is not None:
        model = ProbeHeads.around(model, parse_heads(cfg.model.probe_heads), num_classes)
    load_model_state(model, state["model"], path, partial=frozen)
    model.eval()
    if isinstance(model, ProbeHeads):
        names = model.head_names
        if head not in names:
            raise ExportError(f"this run trained probe heads {names}: pick one with --head NAME (or --head all).")
        return model.single_head_model(head).eval()
    if head is not None:
        raise ExportError(f"--head applies to probe-head runs; this run has one head ({cfg.model.model_arch}).")
    return model


def timm_twin(model: nn.Module, cfg) -> nn.Module | None:
    """A timm model holding ``model``'s weights whose forward is the same classifier, or None when timm has no such
    model (late masking, the ViT ``cls_mean`` head)."""
    import timm

    from bgmask.models import Classifier

    if type(model) is not Classifier or model.head_kind == "cls_mean":
        return None
    args = {"num_classes": model.head.out_features}
    backbone = model.backbone
    args.update(model.adapter.timm_head_args(model.head_kind, cfg.model.image_size))
    arch = backbone.pretrained_cfg.get("architecture", cfg.model.model_arch)
    twin = timm.create_model(arch, pretrained=False, **args)
    state = dict(backbone.state_dict())
    if model.pool_module is not None:  # a probe head's own copy of the CNN's head norm
        state.update({f"head.{k}": v for k, v in model.pool_module.state_dict().items()})
    fc = "head.fc" if "head.fc.weight" in twin.state_dict() else "head"
    state.update({f"{fc}.weight": model.head.weight, f"{fc}.bias": model.head.bias})
    twin.load_state_dict(state, strict=True)
    return twin.eval()


def same_logits(a: nn.Module, b: nn.Module, image_size: int) -> float:
    """Largest absolute difference of the two models' logits on a random batch (fp32, eval mode)."""
    x = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def export_run(run_dir, out, checkpoint: str = "best", head: str | None = None, overwrite: bool = False) -> list[Path]:
    """Export a run folder (one folder per probe head with ``head="all"``); returns the folders written."""
    from bgmask.infra.checkpoint import load_checkpoint
    from bgmask.models.heads import parse_heads

    run_dir, out = Path(run_dir), Path(out)
    path = checkpoint_path(run_dir, checkpoint)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    cfg, strategy = run_config(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    state = load_checkpoint(path)
    if head == "all":
        if cfg.model.probe_heads is None:
            raise ExportError("--head all applies to probe-head runs; this run has one head.")
        return [export_run(run_dir, out / name.replace(":", "_"), checkpoint, name, overwrite)[0]
                for name in parse_heads(cfg.model.probe_heads)]
    model = run_model(cfg, strategy, state, path, head)
    _write_atomically(out, overwrite, lambda tmp: _write(tmp, model, cfg, strategy, state, results, path, head))
    return [out]


def _write(folder: Path, model, cfg, strategy, state, results, path: Path, head: str | None) -> None:
    from timm.models import save_for_hf

    from bgmask.model_card import model_card

    names = label_names(cfg.data.data_path, state["num_classes"])
    late_model = hasattr(model, "masked_features")
    base = model.classifier if late_model else model
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "strategy": strategy.name,
            "needs": needs_of("late" if late_model else "early" if strategy.name == "early" else "none"),
            "spec": {"arch": cfg.model.model_arch, "num_classes": state["num_classes"],
                     "image_size": cfg.model.image_size, "vit_head": base.head_kind,
                     "head_norm": cfg.model.head_norm, "pool_module": base.pool_module is not None},
            "late": ({"second_last": model.second_last, "blocks_after_mask": model.after,
                      "masked_mean": model.masked_mean,
                      "mask_downsample": model.to_grid.downsample, "mask_area_threshold": model.to_grid.threshold}
                     if late_model else None),
            "transform": {"image_size": cfg.model.image_size, "crop_pct": cfg.aug.crop_pct,
                          "interpolation": cfg.aug.eval_interpolation, "mean": list(IMAGENET_MEAN),
                          "std": list(IMAGENET_STD)},
            "label_names": names, "checkpoint": path.name, "epoch": state.get("epoch"), "head": head}
    data_config = {"input_size": (3, cfg.model.image_size, cfg.model.image_size), "crop_pct": cfg.aug.crop_pct,
                   "interpolation": cfg.aug.eval_interpolation, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                   "crop_mode": "center"}
    twin = timm_twin(model, cfg)
    if twin is not None:
        diff = same_logits(model, twin, cfg.model.image_size)
        if diff > 1e-4:
            raise ExportError(f"the timm model's logits differ from the run's by {diff:.2e}: not exported (a bug; "
                              f"please report it with the run's args.yaml).")
        info["layout"] = "timm"
        timm_cfg = {"tag": f"bgmask-{strategy.name}", "license": "other"}  # not the source weights' tag
        save_for_hf(twin, folder, model_config={"label_names": names, "bgmask": info, "pretrained_cfg": timm_cfg},
                    data_config=data_config, safe_serialization=True)
    else:
        from safetensors.torch import save_file

        info["layout"] = "bgmask"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
        config = {"architecture": cfg.model.model_arch, "num_classes": state["num_classes"], "label_names": names,
                  "pretrained_cfg": {**data_config, "num_classes": state["num_classes"]}, "bgmask": info}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "README.md").write_text(model_card(info, cfg, results, head))


def _write_atomically(out: Path, overwrite: bool, write) -> None:
    """``write(tmp)`` into a hidden folder beside ``out``, renamed to ``out`` when complete; removed on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write(tmp)
        if out.exists() and overwrite:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_export(folder) -> Export:
    """An export folder's description, or a one-line error naming what it is not."""
    folder = Path(folder)
    config = folder / "config.json"
    if not config.is_file() or not (folder / "model.safetensors").is_file():
        raise ExportError(f"{folder} is not an export (it needs config.json and model.safetensors); make one with "
                          f"python -m bgmask.export RUN_DIR --out DIR.")
    info = json.loads(config.read_text()).get("bgmask")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ExportError(f"{folder} is not a bgmask export (no 'bgmask' block in config.json); a plain timm model "
                          f"loads with timm.create_model('local-dir:{folder}', pretrained=True).")
    if info.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{folder} is export format version {info.get('format_version')}; this version of bgmask "
                          f"reads version {FORMAT_VERSION}: export the run again with this version.")
    return Export(info["layout"], info["strategy"], info["needs"], info["spec"], info["late"], info["transform"],
                  info["label_names"])


def load_classifier(folder) -> nn.Module:
    """The exported classifier in eval mode on CPU: a timm model for the timm layout; for the bgmask layout the
    run's own model (late masking: ``forward(images, masks)``, masks ``B,H,W`` with 1 = bird). ``.export`` holds the
    folder's :class:`Export` description."""
    import timm
    from safetensors.torch import load_file

    from bgmask.models import create_classifier
    from bgmask.models.late_masked import LateMaskedClassifier
    from bgmask.models.masking import MaskGrid
    from bgmask.models.weights import ModelSpec

    folder = Path(folder)
    export = read_export(folder)
    if export.layout == "timm":
        model = timm.create_model(f"local-dir:{folder.resolve()}", pretrained=True)
    else:
        vit_head = export.spec["vit_head"] if export.spec["vit_head"] != "pool" else "cls_mean"  # CNNs: unused
        classifier = create_classifier(ModelSpec(**{k: export.spec[k] for k in SPEC_FIELDS}, vit_head=vit_head))
        if export.spec["pool_module"]:  # a probe head's own copy of the CNN's head norm
            classifier.pool_module = copy.deepcopy(classifier.head_norm_module())
        model = classifier
        if export.late is not None:
            late = export.late
            model = LateMaskedClassifier(classifier, masked_mean=late["masked_mean"],
                                         to_grid=MaskGrid(late["mask_downsample"], late["mask_area_threshold"]),
                                         after=late["blocks_after_mask"])
        model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    model.eval()
    model.export = export
    return model


def main(argv=None) -> int:
    p = parser_from_doc(__doc__.split("\n\n")[0], prog="python -m bgmask.export")
    p.add_argument("run_dir", type=Path, help="a finished run folder (its --snapshot_dir)")
    p.add_argument("--out", type=Path, required=True, help="the export folder to create")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                   help="best.pt, the selected epoch (last.pt when the run keeps only that), or last.pt")
    p.add_argument("--head", help="probe-head runs: the head to export, or 'all' (one folder per head)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = p.parse_args(argv)
    try:
        written = export_run(args.run_dir, args.out, args.checkpoint, args.head, args.overwrite)
    except BgmaskError as e:
        print(f"error: {e}")
        return 2
    for folder in written:
        print(f"exported {folder} ({read_export(folder).layout} layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
