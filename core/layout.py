"""The model's named parts, as the plan, the module table and plan files name them.

Plain data with no torch import, so options can be checked before torch loads.
"""

from __future__ import annotations

# Display name -> module path, in data-flow order.
MODULES: dict[str, str] = {
    "conv1": "backbone.conv1",
    "bn1": "backbone.bn1",
    "layer1": "backbone.layer1",
    "cbam1": "cbam_layer1",
    "layer2": "backbone.layer2",
    "cbam2": "cbam_layer2",
    "layer3": "backbone.layer3",
    "cbam3": "cbam_layer3",
    "layer4": "backbone.layer4",
    "cbam4": "cbam_layer4",
    "fc": "backbone.fc",
}

# Modules the ImageNet weights do not provide: the 3x3 stem that replaces the
# 7x7/stride-2 one, the attention blocks, and the head for the new classes.
NEW_MODULES: tuple[str, ...] = ("conv1", "cbam1", "cbam2", "cbam3", "cbam4", "fc")
