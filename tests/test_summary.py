"""The model tree's rows agree with torchinfo's summary of the same model."""

from __future__ import annotations

import torchinfo

from core.model import ResNet18CBAM
from core.plan import PlanOptions, assign_groups, build_plan
from core.tree import summarize


def test_rows_match_torchinfo() -> None:
    model = ResNet18CBAM()
    assign_groups(model, build_plan(PlanOptions()).stages[1])  # some frozen, some trainable
    rows = summarize(model, 32)
    info = torchinfo.summary(model, input_size=(1, 3, 32, 32), depth=10, verbose=0)
    by_module = {id(layer.module): layer for layer in info.summary_list}
    modules = dict(model.named_modules())
    compared = 0
    for row in rows:
        layer = by_module.get(id(modules[row.path]))
        if layer is None:  # torchinfo lists only modules that run in forward
            assert row.output_shape == ()
            continue
        compared += 1
        assert row.params == layer.num_params, row.path
        assert list(row.output_shape) == list(layer.output_size), row.path
    assert compared > 60
    assert rows[0].params == info.total_params == 11_217_874


def test_cbam_rows_are_marked_and_rows_survive_the_event_stream() -> None:
    rows = summarize(ResNet18CBAM(), 32)
    marked = {r.path for r in rows if r.is_cbam and r.type == "CBAM"}
    assert marked == {"cbam_layer1", "cbam_layer2", "cbam_layer3", "cbam_layer4"}
    assert all(r.is_cbam for r in rows if r.path.startswith("cbam_layer"))
    assert not any(r.is_cbam for r in rows if r.path.startswith("backbone"))
    # In forward order: each CBAM block right after the layer it follows.
    top = [r.path for r in rows if r.depth == 1]
    assert top == ["backbone.conv1", "backbone.bn1", "backbone.relu", "backbone.layer1", "cbam_layer1",
                   "backbone.layer2", "cbam_layer2", "backbone.layer3", "cbam_layer3", "backbone.layer4", "cbam_layer4",
                   "backbone.avgpool", "backbone.fc", "backbone.maxpool"]  # the Identity the forward never calls, last
    shapes = {r.path: r.output_shape for r in rows}
    assert shapes["backbone.layer1"] == (1, 64, 32, 32) and shapes["cbam_layer4"] == (1, 512, 4, 4)
