"""The gallery of ``python -m bgmask.predict --figure``: per image the input, its mask, the top-3 classes and an
attribution map of the top class (the diagnostics' own method for bgmask-layout models; |gradient x input| for
timm models, what the diagnostics use for ViTs)."""

from __future__ import annotations

from pathlib import Path

import torch


def attribution(model, images: torch.Tensor, masks: torch.Tensor | None, labels: torch.Tensor,
                late: bool) -> tuple[torch.Tensor, str]:
    """``B,H,W`` maps and the method's name."""
    from bgmask.diagnostics.attribution import attribution_maps, attribution_method, no_parameter_grads
    from bgmask.strategies import ModelInput

    if hasattr(model, "adapter"):  # the project's own model: the diagnostics' method
        kind = ModelInput.IMAGE_AND_MASK if late else ModelInput.IMAGE
        full = masks if masks is not None else torch.ones(images.shape[0], *images.shape[-2:])
        maps = attribution_maps(model, images, full, labels, kind)
        return maps.detach(), attribution_method(model)
    with no_parameter_grads(model):
        x = images.clone().requires_grad_(True)
        model(x).gather(1, labels[:, None]).float().sum().backward(inputs=[x])
    return (x.grad * x.detach()).sum(1).abs(), "|gradient x input|"


def gallery(model, shown, items, names, late: bool, transform: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean = torch.tensor(transform["mean"]).view(3, 1, 1)
    std = torch.tensor(transform["std"]).view(3, 1, 1)
    rows = []
    for images, masks, top_p, top_c, index in shown:
        maps, method = attribution(model.cpu(), images, masks, top_c[:, 0], late)
        for j in range(images.shape[0]):
            rows.append((images[j], None if masks is None else masks[j], top_p[j], top_c[j], int(index[j]), maps[j]))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for r, (image, mask, p, c, i, amap) in enumerate(rows):
        pixels = (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[r, 0].imshow(pixels)
        axes[r, 0].set_title(Path(items[i][0]).name[-36:], fontsize=8)
        if mask is not None:
            axes[r, 1].imshow(pixels)
            axes[r, 1].imshow(mask.numpy(), cmap="Greens", alpha=0.6, vmin=0, vmax=1)
            axes[r, 1].set_title(f"mask: {float(mask.float().mean()):.0%} bird", fontsize=9)
        else:
            axes[r, 1].text(0.5, 0.5, "no mask", ha="center", va="center")
        text = "\n".join(f"{names[int(k)][:28]}  {float(q):.0%}" for q, k in zip(p[:3], c[:3]))
        heat = axes[r, 2].imshow(amap.numpy(), cmap="magma")
        axes[r, 2].set_title(text, fontsize=8)
        fig.colorbar(heat, ax=axes[r, 2], fraction=0.046)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"top-3 predictions; attribution of the top class: {method}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (3 * len(rows))))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
