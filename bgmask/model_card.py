"""The ``README.md`` of an export (:mod:`bgmask.export`): a Hugging Face model card generated from ``results.json``.

Every number in it is read from the run's ``results.json`` (the test asserts they are equal); intervals are 95 %
Wilson intervals on the evaluation set's image count, as in the project's tables.
"""

from __future__ import annotations

from bgmask.data.groups import wilson_interval

UPSTREAM_COMMIT = "7d4fb4e"  # the upstream commit docs/fidelity.md checks this implementation against
INPUT_TEXT = {
    "images": "an RGB image (the evaluation transform below)",
    "masked images": "an RGB image whose background is already replaced (early masking: the run trained and was "
                     "evaluated on pre-masked images; `python -m bgmask.predict` masks images itself when given masks)",
    "images and masks": "an RGB image **and** a binary bird mask of the same size (late masking zeroes the "
                        "background features before pooling; masks from a folder or from the MMSeg segmenter, "
                        "`python -m bgmask.predict --masks DIR` or `--segmenter CONFIG CHECKPOINT`)",
}
DIAGNOSTIC_VIEWS = {"only_fg": "bird only, background black", "only_bg_b": "background only, bird's box black",
                    "only_bg_t": "background only, bird's box tiled with background",
                    "mixed_same": "bird on another background of its class",
                    "mixed_rand": "bird on a background of another class"}


def accuracy(metrics: dict) -> str:
    """``73.0 % [68.5, 77.1] (292 / 400)`` from a metrics dict with correct and num_images."""
    correct, total = metrics.get("correct"), metrics.get("num_images")
    if correct is None or not total:
        return f"{metrics['top1']:.1f} %"
    low, high = wilson_interval(correct, total)
    return f"{metrics['top1']:.1f} % [{low:.1f}, {high:.1f}] ({correct} / {total})"


def result_sets(results: dict, head: str | None) -> dict[str, dict]:
    """Evaluation sets (name → metrics) of the run, or of one probe head."""
    source = results.get("probes", {}).get(head, {}) if head else results
    return {name: m for name, m in source.items() if isinstance(m, dict) and "top1" in m and "num_images" in m
            and name not in DIAGNOSTIC_VIEWS}


def regime(cfg) -> str:
    return "frozen backbone" if cfg.model.freeze_backbone else "fine-tuned"


def model_card(info: dict, cfg, results: dict, head: str | None) -> str:
    spec, transform = info["spec"], info["transform"]
    loader = ('timm.create_model("local-dir:PATH", pretrained=True)' if info["layout"] == "timm"
              else 'bgmask.load_classifier("PATH")')
    lines = ["---", "library_name: " + ("timm" if info["layout"] == "timm" else "bgmask"), "license: other",
             "tags:", "- image-classification", "- background-masking", "- bgmask", "---", "",
             f"# {spec['arch']}: {info['strategy']} ({regime(cfg)})" + (f", probe head `{head}`" if head else ""), "",
             f"A {spec['num_classes']}-class classifier trained with bgmask, the implementation of "
             f"\"Masking Strategies for Background Bias Removal in Computer Vision "
             f"Models\" (ICCV 2023 Workshops), strategy **{info['strategy']}**, exported from "
             f"`{info['checkpoint']}` (epoch {info['epoch']}).", "",
             "## Input", "", f"The model needs {INPUT_TEXT[info['needs']]}.", "",
             f"Evaluation transform: resize the short side to floor({transform['image_size']} / "
             f"{transform['crop_pct']}) ({transform['interpolation']}), center-crop {transform['image_size']}, "
             f"normalise with mean {transform['mean']} and std {transform['std']}.", "",
             "## Use", "", "```python", ("import timm" if info["layout"] == "timm" else "import bgmask"),
             f"model = {loader}", "```", "",
             "```bash", "python -m bgmask.predict --model PATH IMAGES_OR_FOLDER --out predictions"
             + (" --masks MASK_FOLDER" if info["needs"] == "images and masks" else ""), "```", ""]
    if info["label_names"] and info["label_names"][0] == "class_000":
        lines += ["Class names were not available at export (the run's data folder was not found): labels are "
                  "class indices.", ""]
    lines += ["## Evaluation", "", "| set | top-1 [95 % Wilson interval] (correct / images) | worst group |",
              "|---|---|---|"]
    for name, metrics in result_sets(results, head).items():
        worst = metrics.get("worst_group")
        lines.append(f"| {name} | {accuracy(metrics)} | {'' if worst is None else f'{worst:.1f} %'} |")
    lines += ["", f"Chance: {100 / spec['num_classes']:.1f} % (1 / {spec['num_classes']} classes)."]
    best = results.get("best", {})
    if best:
        lines += ["", f"Selected epoch {best.get('epoch')} on `{best.get('selected_on')}`."]
    diagnostics = results.get("diagnostics") if not head else None
    if isinstance(diagnostics, dict) and "bg_gap" in diagnostics:
        lines += ["", "## Background diagnostics", "", "| view | top-1 |", "|---|---|"]
        lines += [f"| {DIAGNOSTIC_VIEWS[v]} (`{v}`) | {accuracy(diagnostics[v])} |" for v in DIAGNOSTIC_VIEWS
                  if isinstance(diagnostics.get(v), dict)]
        lines += ["", f"BG-Gap (mixed-same − mixed-rand): {diagnostics['bg_gap']:.2f} points; foreground share of "
                      f"the attribution ({diagnostics.get('attribution', '')}): "
                      f"{diagnostics.get('fg_attribution', float('nan')):.3f}."]
    opt, aug, model = cfg.optim, cfg.aug, cfg.model
    weights = results.get("weights") or {}
    lines += ["", "## Training recipe", "",
              f"- data: `{cfg.data.data_path}` ({results.get('dataset', cfg.data.dataset)}), "
              f"{results.get('world_size', 1)} process(es) × batch {cfg.data.batch_size}",
              f"- start weights: {weights.get('source', model.start_weights)}"
              + (f" ({weights['location']})" if weights.get("location") else ""),
              f"- {opt.epochs} epochs, {opt.optimizer_type} lr {opt.lr:g} (head × {opt.scratch_lr_factor:g}), "
              f"weight decay {opt.weight_decay:g}, {opt.scheduler_type}, precision {results.get('precision', '')}",
              f"- augmentation {aug.augmentations_to_use}, mixup/cutmix "
              f"{'on' if aug.turn_on_mixup_or_cutmix else 'off'}, label smoothing {opt.smoothing:g}, drop-path "
              f"{model.drop_path:g}, seed {cfg.run.seed}",
              f"- head `{spec['vit_head']}`, head init {results.get('head_init', model.head_init)}"]
    if info.get("late"):
        late = info["late"]
        where = {0: "last", 1: "second-last", 2: "third-last"}.get(late["blocks_after_mask"],
                                                                   f"{late['blocks_after_mask']}-from-last")
        lines.append(f"- late masking after the {where} stage/block, "
                     f"masks to the grid by {late['mask_downsample']}"
                     + (", mean over foreground tokens" if late["masked_mean"] else ""))
    lines += ["", f"Implementation follows upstream commit `{UPSTREAM_COMMIT}` of the paper's code where "
                  "`docs/fidelity.md` of bgmask says so, and lists every difference.", "",
              "## License", "",
              "The code is MIT-licensed. The weights derive from the pretrained backbone (its own license: DINOv2 "
              "and timm's ConvNeXt weights are Apache-2.0) and from the training data (CUB-200-2011 is for "
              "non-commercial research); check both before any other use.", ""]
    return "\n".join(lines)
