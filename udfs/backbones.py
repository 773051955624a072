"""torchvision's ResNet and VGG-16 networks and its evaluation resize and crop, built from torch and Pillow
alone, so that an executor's Python worker does not import torchvision.

torchvision's package import runs every submodule's (detection ops, datasets, video io), and its ops
import ``torch._dynamo``: 1.35 s of each worker's start on this suite's machines, paid once per task slot
by every embedding run. The networks here have torchvision's module names (their ``state_dict`` keys are
torchvision's: its checkpoints load strictly), its layer order and forward, and its initialisation, in
the same order, so that ``torch.manual_seed(s)`` then building one gives torchvision's weights bit for
bit. The tests compare all three with torchvision's own: weights after a seed, features for the same
input, and the resized and cropped pixels.
"""
from __future__ import annotations

from typing import Any

from udfs.model_shapes import RESNET_LAYOUTS, RESNET_WIDTHS, VGG16_LAYERS


def _modules() -> Any:
    import torch

    nn = torch.nn

    def conv3x3(inplanes: int, planes: int, stride: int = 1) -> Any:
        return nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)

    def conv1x1(inplanes: int, planes: int, stride: int = 1) -> Any:
        return nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Any = None) -> None:
            super().__init__()
            self.conv1 = conv3x3(inplanes, planes, stride)
            self.bn1 = nn.BatchNorm2d(planes)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = conv3x3(planes, planes)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x: Any) -> Any:
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Any = None) -> None:
            super().__init__()
            self.conv1 = conv1x1(inplanes, planes)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = conv3x3(planes, planes, stride)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = conv1x1(planes, planes * self.expansion)
            self.bn3 = nn.BatchNorm2d(planes * self.expansion)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample
            self.stride = stride

        def forward(self, x: Any) -> Any:
            identity = x
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            if self.downsample is not None:
                identity = self.downsample(x)
            out += identity
            return self.relu(out)

    class ResNet(nn.Module):
        def __init__(
            self, block: Any, layers: tuple[int, ...], num_classes: int = 1000, initialise: bool = True
        ) -> None:
            super().__init__()
            self.inplanes = 64
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, RESNET_WIDTHS[0], layers[0])
            self.layer2 = self._make_layer(block, RESNET_WIDTHS[1], layers[1], stride=2)
            self.layer3 = self._make_layer(block, RESNET_WIDTHS[2], layers[2], stride=2)
            self.layer4 = self._make_layer(block, RESNET_WIDTHS[3], layers[3], stride=2)
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512 * block.expansion, num_classes)
            for m in self.modules() if initialise else ():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

        def _make_layer(self, block: Any, planes: int, blocks: int, stride: int = 1) -> Any:
            downsample = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, planes * block.expansion, stride),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            layers = [block(self.inplanes, planes, stride, downsample)]
            self.inplanes = planes * block.expansion
            layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
            return nn.Sequential(*layers)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class VGG(nn.Module):
        def __init__(
            self, features: Any, num_classes: int = 1000, dropout: float = 0.5, initialise: bool = True
        ) -> None:
            super().__init__()
            self.features = features
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes),
            )
            for m in self.modules() if initialise else ():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

        def forward(self, x: Any) -> Any:
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    def vgg_features() -> Any:
        layers: list[Any] = []
        in_channels = 3
        for layer in VGG16_LAYERS:
            if layer == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                conv = nn.Conv2d(in_channels, int(layer), kernel_size=3, padding=1)
                layers += [conv, nn.ReLU(inplace=True)]
                in_channels = int(layer)
        return nn.Sequential(*layers)

    return ResNet, BasicBlock, Bottleneck, VGG, vgg_features


_CLASSES: Any = None


def build(name: str, *, initialise: bool = True) -> Any:
    """torchvision's ``<name>(weights=None)``: a new classification network on the default device
    (under ``torch.device("meta")``: shapes only), with torchvision's random initialisation unless
    ``initialise`` is False (for weights loaded next: on the meta device, ``normal_`` would import
    ``torch._dynamo``, over a second)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _modules()
    resnet, basic, bottleneck, vgg, vgg_features = _CLASSES
    if name == "vgg16":
        return vgg(vgg_features(), initialise=initialise)
    kind, layers = RESNET_LAYOUTS[name]
    return resnet(bottleneck if kind == "bottleneck" else basic, layers, initialise=initialise)


def resize_and_crop(image: Any, resize: int, crop: int) -> Any:
    """torchvision's ``Resize(resize)`` (bilinear, antialiased: Pillow's resampling) then
    ``CenterCrop(crop)`` on a Pillow image, as a uint8 tensor [3, crop, crop] (``pil_to_tensor``);
    ``crop`` at most ``resize``, so the crop never needs padding."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_width, new_height) != (width, height):
        image = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    top = int(round((new_height - crop) / 2.0))
    left = int(round((new_width - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    pixels = torch.as_tensor(np.array(image, copy=True))
    return pixels.view(crop, crop, len(image.getbands())).permute((2, 0, 1))
