"""Every torchvision classifier gets a working head; a few small ones really train a step."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights
from torch import nn

from tl.errors import TLError
from tl.models.architectures import IMAGENET_CLASSES, available_archs, backbone_stages, build_base, build_model, check_arch
from tl.models.heads import ClassifierHead, HeadSpec, find_original_head, get_head, replace_head


def test_every_torchvision_classifier_is_listed():
    names = available_archs()
    assert len(names) >= 70
    for expected in ("alexnet", "vgg16", "resnet50", "densenet121", "mobilenet_v3_large", "efficientnet_b0",
                     "convnext_tiny", "squeezenet1_0", "inception_v3", "googlenet", "vit_b_16", "swin_t"):
        assert expected in names


@pytest.mark.parametrize("arch", available_archs())
def test_head_found_and_replaced(arch):
    """Built on the meta device: the sweep costs seconds. The new head has N outputs and the old in_features."""
    with init_empty_weights(include_buffers=False):
        model = build_base(arch)
        location = find_original_head(model, IMAGENET_CLASSES)
        old = model.get_submodule(location.main)
        old_in = old.in_features if isinstance(old, nn.Linear) else [m for m in old.modules() if isinstance(m, nn.Conv2d)][-1].in_channels
        new_location = replace_head(model, location, 7, HeadSpec())
    assert new_location.main == location.main
    head = [m for m in model.get_submodule(location.main).modules() if isinstance(m, ClassifierHead)][0]
    assert head.fc.out_features == 7 and head.in_features == old_in
    for path in new_location.aux:
        assert model.get_submodule(path).out_features == 7
    assert not [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == IMAGENET_CLASSES]
    stages = backbone_stages(model)
    assert stages and all(not name.startswith(new_location.main) for name, _ in stages)


@pytest.mark.parametrize(
    "arch,size,aux",
    [("squeezenet1_0", 64, 0), ("mobilenet_v3_small", 32, 0), ("resnet18", 32, 0), ("vgg11", 32, 0), ("googlenet", 64, 2),
     ("densenet121", 32, 0)],
)
def test_small_models_forward_backward(arch, size, aux):
    torch.manual_seed(0)
    model, info = build_model(arch, 3, head=HeadSpec(kind="mlp", hidden=16, dropout=0.1))
    assert len(info.head.aux) == aux
    model.train()
    output = model(torch.randn(4, 3, size, size))
    logits, *aux_logits = output if not isinstance(output, torch.Tensor) else (output,)
    assert logits.shape == (4, 3) and torch.isfinite(logits).all()
    assert len([a for a in aux_logits if a is not None]) == aux
    loss = logits.logsumexp(1).mean() + sum(a.logsumexp(1).mean() for a in aux_logits if a is not None)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.eval()
    assert model(torch.randn(2, 3, size, size)).shape == (2, 3)


def test_cut_at_puts_head_on_earlier_stage():
    model, info = build_model("resnet18", 5, cut_at="layer2")
    head = model.get_submodule(info.head.main)
    assert head.in_features == 128  # layer2's channels, not layer4's 512
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert not any(name.startswith("trunk.layer3") for name, _ in model.named_parameters())


def test_cut_at_unknown_layer_suggests():
    with pytest.raises(TLError, match="layer9") as excinfo:
        build_model("resnet18", 2, cut_at="layer9")
    assert "layer" in excinfo.value.hint


def test_arch_typo_gets_close_matches():
    with pytest.raises(TLError) as excinfo:
        check_arch("resnet_18")
    assert "resnet18" in excinfo.value.hint


def test_custom_builder_trains(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "from torch import nn\n"
        "def build(num_classes):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model, info = build_model("my_models:build", 4)
    assert info.head.main == "4"
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert get_head(model).main == "4"
