"""The model: the seed's architecture and keys, parameter count, weights sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from core.errors import WeightsError
from core.layout import MODULES, NEW_MODULES
from core.model import ResNet18CBAM, build_model


# --- the seed note's classes, as written there (comments dropped) -------------
class SeedChannelAttention(nn.Module):
    def __init__(self, in_channels, ratio=16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(in_channels, in_channels // ratio, bias=False),
            nn.ReLU(),
            nn.Linear(in_channels // ratio, in_channels, bias=False),
        )
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        b, c, _h, _w = x.shape
        avg_out = self.fc(self.avg_pool(x).view(b, c))
        max_out = self.fc(self.max_pool(x).view(b, c))
        attention = self.sigmoid(avg_out + max_out).view(b, c, 1, 1)
        return x * attention


class SeedSpatialAttention(nn.Module):
    def __init__(self, kernel_size=7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        avg_out = torch.mean(x, dim=1, keepdim=True)
        max_out, _ = torch.max(x, dim=1, keepdim=True)
        pool_out = torch.cat([avg_out, max_out], dim=1)
        attention = self.conv(pool_out)
        return x * self.sigmoid(attention)


class SeedCBAM(nn.Module):
    def __init__(self, in_channels, ratio=16, kernel_size=7):
        super().__init__()
        self.channel_attn = SeedChannelAttention(in_channels, ratio)
        self.spatial_attn = SeedSpatialAttention(kernel_size)

    def forward(self, x):
        x = self.channel_attn(x)
        x = self.spatial_attn(x)
        return x


class SeedResNet18CBAM(nn.Module):
    def __init__(self, num_classes=10, cbam_ratio=16, cbam_kernel=7):
        super().__init__()
        self.backbone = torchvision.models.resnet18(weights=None)
        self.backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.backbone.maxpool = nn.Identity()
        self.cbam_layer1 = SeedCBAM(64, cbam_ratio, cbam_kernel)
        self.cbam_layer2 = SeedCBAM(128, cbam_ratio, cbam_kernel)
        self.cbam_layer3 = SeedCBAM(256, cbam_ratio, cbam_kernel)
        self.cbam_layer4 = SeedCBAM(512, cbam_ratio, cbam_kernel)
        self.backbone.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.backbone.relu(self.backbone.bn1(self.backbone.conv1(x)))
        x = self.cbam_layer1(self.backbone.layer1(x))
        x = self.cbam_layer2(self.backbone.layer2(x))
        x = self.cbam_layer3(self.backbone.layer3(x))
        x = self.cbam_layer4(self.backbone.layer4(x))
        x = torch.flatten(self.backbone.avgpool(x), 1)
        return self.backbone.fc(x)


def test_seed_state_dict_loads_strictly_and_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    seed = SeedResNet18CBAM().eval()
    ours = ResNet18CBAM().eval()
    ours.load_state_dict(seed.state_dict(), strict=True)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), seed(x))
    assert list(ours.state_dict()) == list(seed.state_dict())


def test_parameter_count_and_shapes() -> None:
    model = ResNet18CBAM()
    assert sum(p.numel() for p in model.parameters()) == 11_217_874
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert ResNet18CBAM(num_classes=3)(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_module_table_covers_every_parameter_once() -> None:
    model = ResNet18CBAM()
    names = [n for n, _ in model.named_parameters()]
    owners = [[m for m, path in MODULES.items() if n.startswith(path + ".")] for n in names]
    assert all(len(o) == 1 for o in owners)
    assert set(NEW_MODULES) <= set(MODULES)


def _torchvision_state(path: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_imagenet_weights_come_through_torchvisions_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    cache = tmp_path / "home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = _torchvision_state(cache / "resnet18-f37072fd.pth")
    model = build_model(10, "imagenet")
    ours = model.state_dict()
    assert torch.equal(ours["backbone.layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(ours["backbone.bn1.running_var"], state["bn1.running_var"])
    # The replaced stem and the new head are not the ImageNet ones.
    assert ours["backbone.conv1.weight"].shape == (64, 3, 3, 3)
    assert ours["backbone.fc.weight"].shape == (10, 512)


def test_imagenet_without_network_says_where_the_cache_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as info:
        build_model(10, "imagenet")
    message = str(info.value)
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in message
    assert "--weights none" in message and "\n" not in message


def test_corrupt_cached_imagenet_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match="unreadable"):
        build_model(10, "imagenet")


def test_weights_from_a_torchvision_state_dict_file(tmp_path: Path) -> None:
    state = _torchvision_state(tmp_path / "r18.pth")
    model = build_model(10, str(tmp_path / "r18.pth"))
    assert torch.equal(model.state_dict()["backbone.layer1.0.conv2.weight"], state["layer1.0.conv2.weight"])


def test_weights_from_a_seed_state_dict_and_from_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(2)
    seed = SeedResNet18CBAM()
    torch.save(seed.state_dict(), tmp_path / "seed.pth")
    model = build_model(10, str(tmp_path / "seed.pth"))
    assert torch.equal(model.state_dict()["cbam_layer2.spatial_attn.conv.weight"], seed.cbam_layer2.spatial_attn.conv.weight)
    torch.save({"format": "cbam-tui", "model": seed.state_dict()}, tmp_path / "ck.pt")
    again = build_model(10, str(tmp_path / "ck.pt"))
    assert torch.equal(again.state_dict()["backbone.fc.bias"], seed.backbone.fc.bias)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"garbage", "cannot read"),
        ({"something": torch.zeros(1)}, "neither a torchvision"),
        ("wrong-classes", "another number of classes"),
    ],
)
def test_bad_weights_files_are_one_sentence(tmp_path: Path, content: object, match: str) -> None:
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "wrong-classes":
        torch.save(ResNet18CBAM(num_classes=5).state_dict(), path)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match) as info:
        build_model(10, str(path))
    assert "\n" not in str(info.value)


def test_weights_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="directory"):
        build_model(10, str(tmp_path))


def test_no_strided_conv_sees_a_one_pixel_map_at_the_smallest_image_size() -> None:
    """On CPUs with native bf16, the bf16 weight gradient of a stride-2 3x3 conv on a 1x1 map
    is not reproducible (oneDNN reads memory it never wrote: two identical steps differed by
    up to 7.6e11); bench/transfer.py's stand-in met it at 8x8. cbam-tui's model must never
    build that geometry at any image size a user may choose (8 to 512)."""
    import typing

    from core.config import RunConfig

    smallest = typing.get_type_hints(RunConfig, include_extras=True)["image_size"].__metadata__[0].ge
    model = build_model(10, "none")
    seen: list[tuple[str, int]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0].shape[-1])))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride != (1, 1)
             and m.kernel_size != (1, 1)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, smallest, smallest))
    for hook in hooks:
        hook.remove()
    assert seen and all(size >= 2 for _, size in seen), seen
