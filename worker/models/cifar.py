"""solo-learn's CIFAR ResNets: torchvision's ResNet with a 3x3, stride-1 stem and no max-pool.

No library ships this layout, so it is built here from torchvision's ResNet, changed exactly as solo-learn does
(solo/methods/base.py, BaseMethod.__init__, when the dataset is CIFAR-10/100):
    backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=2, bias=False)
    backbone.maxpool = nn.Identity()
padding=2 (not 1) is solo-learn's choice: the feature maps are 34 x 34 after the stem; with padding 1 the same
weights give different features. tests/unit/test_architectures.py checks it against a transcription of that code.
Evaluation preprocessing is solo-learn's for CIFAR: 32 x 32 images, CIFAR mean and std.
"""

from __future__ import annotations

from torch import nn

SOLO_LEARN_STEM = {"kernel_size": 3, "stride": 1, "padding": 2, "bias": False}
STEM_CHANNELS = 64  # torchvision's ResNet stem width (ResNet.inplanes before layer1)
CIFAR_SIZE = 32
# solo-learn solo/data/classification_dataloader.py, prepare_transforms("cifar10").
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CIFAR_ARCHS = {"resnet18_cifar": "resnet18", "resnet50_cifar": "resnet50"}


def cifar_resnet(name: str, **kwargs) -> nn.Module:
    """torchvision ``name`` (resnet18, resnet50, ...) with solo-learn's CIFAR stem; kwargs go to torchvision."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, **kwargs)
    in_chans = model.conv1.in_channels
    model.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, **SOLO_LEARN_STEM)
    model.maxpool = nn.Identity()
    return model


def resnet18_cifar(**kwargs) -> nn.Module:
    return cifar_resnet("resnet18", **kwargs)


def resnet50_cifar(**kwargs) -> nn.Module:
    return cifar_resnet("resnet50", **kwargs)
