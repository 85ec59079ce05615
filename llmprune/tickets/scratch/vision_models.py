"""The networks of the original lottery-ticket experiments, with the paper's initialisation.

LeNet-300-100 (784-300-100-10, ReLU) and any fully connected net (``--hidden 500,500``);
Conv-2/4/6 (blocks of [conv3x3, ReLU, conv3x3, ReLU, max-pool 2] with 64 / 64-128 /
64-128-256 channels, then fully connected 256, 256 and the output); the toy of the first
write-ups: a two-layer linear net with no bias (``sum_of_two_net``). Weights are drawn from
the Gaussian Glorot initialiser, N(0, 2 / (fan_in + fan_out)); biases start at zero and are
never pruned. All are plain ``nn.Sequential`` stacks, so a step costs what PyTorch's own does.
"""
from __future__ import annotations

import math

import torch
from torch import nn

CONV_BLOCKS = {"conv2": [64], "conv4": [64, 128], "conv6": [64, 128, 256]}


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0][0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


@torch.no_grad()
def glorot_gaussian_(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    fan_in, fan_out = _fans(weight)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return weight.copy_(torch.randn(weight.shape, generator=generator) * std)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every linear and convolution layer, in model order (biases never)."""
    found = {f"{name}.weight": m.weight for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and m.weight.dim() >= 2}
    return found


@torch.no_grad()
def initialise(model: nn.Module, seed: int) -> nn.Module:
    """The paper's initialisation for every prunable layer, drawn from ``seed``; biases zero."""
    generator = torch.Generator().manual_seed(seed)
    for name, weight in prunable_weights(model).items():
        glorot_gaussian_(weight, generator)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and module.bias is not None:
            module.bias.zero_()
    return model


def mlp(inputs: int, hidden: list[int], classes: int, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, classes, bias=bias))
    return nn.Sequential(*layers)


def lenet_300_100(inputs: int = 784, classes: int = 10) -> nn.Sequential:
    return mlp(inputs, [300, 100], classes)


def conv_net(blocks: list[int], input_shape: tuple[int, ...], classes: int = 10) -> nn.Sequential:
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out in blocks:
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(),
                   nn.Conv2d(out, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels, height, width = out, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(channels * height * width, 256), nn.ReLU(),
               nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, classes)]
    return nn.Sequential(*layers)


def sum_of_two_net(hidden: int = 200) -> nn.Sequential:
    """y = V W x with x in R^2: linear, no bias, so a four-weight ticket can be exact."""
    return nn.Sequential(nn.Linear(2, hidden, bias=False), nn.Linear(hidden, 1, bias=False))


def build_model(architecture: str, input_shape: tuple[int, ...], classes: int, hidden: list[int] | None,
                seed: int) -> nn.Module:
    """A freshly initialised network: ``mlp`` (LeNet with hidden 300,100), ``conv2/4/6`` or ``sum-of-two``."""
    if architecture == "sum-of-two":
        model = sum_of_two_net(hidden[0] if hidden else 200)
    elif architecture in CONV_BLOCKS:
        if len(input_shape) != 3:
            raise ValueError(f"{architecture} needs images (channels, height, width), not inputs of shape {input_shape}")
        model = conv_net(CONV_BLOCKS[architecture], input_shape, classes)
    else:
        model = mlp(math.prod(input_shape), hidden or [300, 100], classes)
    return initialise(model, seed)
