"""Each strategy trains exactly the parameters it promises, and frozen BatchNorm statistics do not move."""

from __future__ import annotations

import pytest
import torch

from tl.models.architectures import backbone_stages, build_model
from tl.models.heads import head_param_names
from tl.training.strategies import Phase, apply_phase, parameter_groups, phase_for_epoch, resolve_auto, set_train_mode


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train_steps(model, phase, *, freeze_bn=False, steps=3):
    torch.manual_seed(0)
    apply_phase(model, phase)
    groups = parameter_groups(model, lr=0.05, weight_decay=1e-4, backbone_lr_mult=1.0)
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    for _ in range(steps):
        set_train_mode(model, phase, freeze_bn=freeze_bn)
        images, labels = torch.randn(8, 3, 32, 32) * 2 + 0.5, torch.randint(0, 3, (8,))
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _changed(before, model):
    after = model.state_dict()
    return {k for k in before if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])}


@pytest.fixture
def resnet():
    model, _ = build_model("resnet18", 3)
    return model


def test_full_trains_everything(resnet):
    before = _snapshot(resnet)
    _train_steps(resnet, Phase("full"))
    params = {n for n, _ in resnet.named_parameters()}
    assert params <= _changed(before, resnet)


def test_linear_trains_only_the_head_and_keeps_bn_statistics(resnet):
    before = _snapshot(resnet)
    _train_steps(resnet, Phase("linear"))
    changed = _changed(before, resnet)
    heads = head_param_names(resnet)
    assert {n for n in changed if not n.startswith("fc.")} == set()  # no backbone weight or BN statistic moved
    assert {"fc.fc.weight", "fc.fc.bias"} <= changed and heads == {"fc.fc.weight", "fc.fc.bias"}
    assert "fc.norm.running_mean" in changed  # the head's own feature norm does learn its statistics
    assert all(not p.requires_grad for n, p in resnet.named_parameters() if n not in heads)


def test_partial_freezes_the_first_stages(resnet):
    stages = [name for name, _ in backbone_stages(resnet)]
    assert stages[:3] == ["conv1", "bn1", "layer1"]
    before = _snapshot(resnet)
    _train_steps(resnet, Phase("partial", freeze_depth=3))
    changed = _changed(before, resnet)
    frozen_keys = {k for k in before if k.startswith(("conv1.", "bn1.", "layer1."))}
    assert not (changed & frozen_keys)  # weights and running statistics of frozen stages untouched
    assert "layer2.0.conv1.weight" in changed and "layer2.0.bn1.running_mean" in changed and "fc.fc.weight" in changed


def test_freeze_bn_keeps_statistics_but_trains_weights(resnet):
    before = _snapshot(resnet)
    _train_steps(resnet, Phase("full"), freeze_bn=True)
    changed = _changed(before, resnet)
    assert not {k for k in changed if "running_" in k and not k.startswith("fc.")}
    assert "layer1.0.bn1.weight" in changed and "conv1.weight" in changed


def test_linear_keeps_backbone_dropout_in_eval_mode():
    model, _ = build_model("vgg11", 3)  # classifier[2] and [5] are dropouts of the backbone, classifier[6] is the head
    set_train_mode(model, Phase("linear"), freeze_bn=False)
    assert not model.classifier[2].training and not model.features.training
    assert model.classifier[6].training


def test_gradual_phases():
    assert phase_for_epoch("gradual", 0, freeze_depth=0, unfreeze_epoch=2) == Phase("linear")
    assert phase_for_epoch("gradual", 1, freeze_depth=0, unfreeze_epoch=2) == Phase("linear")
    assert phase_for_epoch("gradual", 2, freeze_depth=0, unfreeze_epoch=2) == Phase("full")


def test_parameter_groups_skip_frozen_and_decay(resnet):
    apply_phase(resnet, Phase("partial", freeze_depth=2))
    groups = parameter_groups(resnet, lr=0.1, weight_decay=0.01, backbone_lr_mult=0.1)
    in_groups = {id(p) for g in groups for p in g["params"]}
    frozen = {id(p) for p in resnet.parameters() if not p.requires_grad}
    assert frozen and not (in_groups & frozen)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 0.1 and by_name["backbone"]["lr"] == pytest.approx(0.01)
    assert by_name["backbone_no_decay"]["weight_decay"] == 0.0 and all(p.ndim == 1 for p in by_name["backbone_no_decay"]["params"])


def test_auto_strategy_reasons():
    assert resolve_auto(10, pretrained=True)[0] == "linear"
    assert resolve_auto(500, pretrained=True)[0] == "full"
    assert resolve_auto(10, pretrained=False)[0] == "full"
