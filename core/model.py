"""ResNet18 + CBAM for 32x32 input, and the weights it starts from.

The architecture and state-dict keys are the seed note's (``backbone.*``,
``cbam_layerN.*``), so a state dict saved from the seed's class loads strictly.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import ResNet, ResNet18_Weights, resnet18

from core.cbam import CBAM
from core.errors import WeightsError

MAX_WEIGHTS_BYTES = 16 << 30


class ResNet18CBAM(nn.Module):
    """torchvision ResNet18 adapted to 32x32 input, with CBAM after each residual stage."""

    def __init__(
        self,
        num_classes: int = 10,
        cbam_ratio: int = 16,
        cbam_kernel: int = 7,
        backbone: ResNet | None = None,
    ) -> None:
        super().__init__()
        self.backbone: ResNet = backbone if backbone is not None else resnet18(weights=None)
        # 32x32 input: a 7x7/2 stem plus max-pool would leave 8x8 maps after the stem.
        self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.cbam_layer1 = CBAM(64, cbam_ratio, cbam_kernel)
        self.cbam_layer2 = CBAM(128, cbam_ratio, cbam_kernel)
        self.cbam_layer3 = CBAM(256, cbam_ratio, cbam_kernel)
        self.cbam_layer4 = CBAM(512, cbam_ratio, cbam_kernel)
        self.backbone.fc = nn.Linear(512, num_classes)
        self.num_classes = num_classes
        # "train": frozen BatchNorm layers keep updating running stats (the seed);
        # "eval": they stay in eval mode whenever the model is in train mode.
        self.frozen_bn = "train"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.relu(b.bn1(b.conv1(x)))
        x = self.cbam_layer1(b.layer1(x))
        x = self.cbam_layer2(b.layer2(x))
        x = self.cbam_layer3(b.layer3(x))
        x = self.cbam_layer4(b.layer4(x))
        logits: torch.Tensor = b.fc(torch.flatten(b.avgpool(x), 1))
        return logits

    def train(self, mode: bool = True) -> ResNet18CBAM:
        # Re-applied on every mode change, so no caller can forget the policy.
        super().train(mode)
        if mode and self.frozen_bn == "eval":
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self


def build_model(
    num_classes: int = 10,
    weights: str = "imagenet",
    cbam_ratio: int = 16,
    cbam_kernel: int = 7,
) -> ResNet18CBAM:
    """Build the model from ``"imagenet"``, ``"none"`` (random init) or a weights file.

    A file may hold a torchvision resnet18 state dict, a ResNet18CBAM state dict
    (the seed's own class saves one) or a cbam-tui checkpoint.
    """
    if weights == "none":
        return ResNet18CBAM(num_classes, cbam_ratio, cbam_kernel)
    if weights == "imagenet":
        return ResNet18CBAM(num_classes, cbam_ratio, cbam_kernel, backbone=_imagenet_resnet18())
    return _from_file(Path(weights), num_classes, cbam_ratio, cbam_kernel)


def _imagenet_resnet18() -> ResNet:
    weights = ResNet18_Weights.DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    try:
        model: ResNet = resnet18(weights=weights)
        return model
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise WeightsError(
            f"cannot download the ImageNet weights ({_reason(exc)}): put {cached.name} in "
            f"{cached.parent} (torchvision's cache, moved by TORCH_HOME), "
            "or use --weights none or --weights PATH"
        ) from exc
    except Exception as exc:  # a truncated or foreign file in the cache
        raise WeightsError(
            f"the cached ImageNet weights {cached} are unreadable ({_reason(exc)}): "
            "delete the file to download it again, or use --weights none or --weights PATH"
        ) from exc


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_state_file(path: Path) -> Any:
    """torch.load a weights or checkpoint file safely: a regular file, tensors and plain data only."""
    import io

    from core.safefs import Dir, UnsafeFile

    if not path.exists():
        raise WeightsError(f"weights file {path} does not exist")
    if path.is_dir():
        raise WeightsError(f"weights path {path} is a directory, not a file")
    try:
        with Dir.open(path.parent, follow=True) as parent:
            data = parent.read(path.name, MAX_WEIGHTS_BYTES)
    except UnsafeFile as exc:
        raise WeightsError(f"cannot use weights {path}: {exc}") from None
    except OSError as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    from core.checkpoint import load_failure, load_untrusted

    try:
        return load_untrusted(io.BytesIO(data or b""))
    except Exception as exc:
        raise WeightsError(
            f"cannot read {path} as a PyTorch state dict or checkpoint ({load_failure(exc)})"
        ) from exc


def _from_file(path: Path, num_classes: int, cbam_ratio: int, cbam_kernel: int) -> ResNet18CBAM:
    obj = load_state_file(path)
    if isinstance(obj, dict) and obj.get("format") == "cbam-tui":
        from core.checkpoint import digest

        stored = obj.pop("digest", None)
        if stored is not None and stored != digest(obj):
            raise WeightsError(f"{path} is damaged: its content does not match its digest")
        obj = obj.get("model")
    state = obj
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path} holds no state dict")
    if any(str(k).startswith("backbone.") for k in state):
        model = ResNet18CBAM(num_classes, cbam_ratio, cbam_kernel)
        _load_strict(model, state, path)
        return model
    if "conv1.weight" in state and "fc.weight" in state:
        backbone = resnet18(weights=None, num_classes=int(state["fc.weight"].shape[0]))
        _load_strict(backbone, state, path)
        return ResNet18CBAM(num_classes, cbam_ratio, cbam_kernel, backbone=backbone)
    raise WeightsError(
        f"{path} is neither a torchvision resnet18 state dict nor a cbam-tui model or checkpoint"
    )


def _load_strict(model: nn.Module, state: dict[str, Any], path: Path) -> None:
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if missing or unexpected:
        sample = (missing or unexpected)[0]
        what = "lacks" if missing else "has an unexpected"
        raise WeightsError(
            f"{path} does not fit this model: it {what} key {sample!r} "
            f"({len(missing)} missing, {len(unexpected)} unexpected)"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(ours[key].shape):
            raise WeightsError(
                f"{path} does not fit this model: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(ours[key].shape)}"
                + (" (another number of classes)" if key.endswith("fc.weight") else "")
            )
    model.load_state_dict(state, strict=True)


def module_parameters(model: nn.Module, path: str) -> list[tuple[str, nn.Parameter]]:
    """The named parameters under one module path (``backbone.layer3``)."""
    prefix = path + "."
    return [(n, p) for n, p in model.named_parameters() if n == path or n.startswith(prefix)]
