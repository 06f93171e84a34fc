"""Networks for continual learning: a backbone, an input normaliser and a scenario head.

Every model is called as ``model(x, task_ids)``:

- ``x`` is the raw ``uint8`` batch ``[N, C, H, W]`` exactly as the benchmark stores it; the model
  converts it to float and normalises it with the benchmark's mean and std (so data stays compact on
  the device). One sample under ``torch.func.vmap`` goes in as a batch of one (``x[None]``, as
  `clcore.fisher` does);
- ``task_ids`` is an int64 tensor with one task id per sample;
- the result is the logits the scenario scores: per-task slice (task-IL, ``multi`` head), a shared
  head (domain-IL, ``single``), or every output unit with those of unseen tasks masked to ``-inf``
  (class-IL, ``incremental``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clcore.config import ModelConfig


class OutputHead(nn.Module):
    """The scenario's output layer.

    ``multi``: one ``nn.Linear`` of ``classes_per_task`` units per task (``heads[t]``), each sample
    scored by its task's head. The heads are separate parameters so that a head whose task is not
    being trained gets no update at all: `idle_parameters` lists them, and the training loop drops
    their (zero) gradients before the optimiser step, so weight decay and Adam's or momentum's
    leftover state do not move them either (as Avalanche's multi-head leaves inactive heads alone).
    ``single``: one ``nn.Linear`` of ``classes_per_task`` units shared by every task.
    ``incremental``: one ``nn.Linear`` of ``n_tasks * classes_per_task`` units; units of tasks not yet
    seen are masked to ``-inf`` (`set_seen_tasks`), so the head only ever scores classes seen so far.
    """

    def __init__(self, in_features: int, kind: str, n_tasks: int, classes_per_task: int):
        super().__init__()
        self.kind = kind
        self.n_tasks = n_tasks
        self.classes_per_task = classes_per_task
        if kind == "multi":
            self.heads = nn.ModuleList(nn.Linear(in_features, classes_per_task) for _ in range(n_tasks))
        else:
            self.linear = nn.Linear(in_features, classes_per_task * (1 if kind == "single" else n_tasks))
        self.register_buffer("seen_tasks", torch.tensor(n_tasks if kind != "incremental" else 1))

    def set_seen_tasks(self, n: int) -> None:
        self.seen_tasks.fill_(n)

    def idle_parameters(self, trained_tasks) -> list[nn.Parameter]:
        """Parameters that training on ``trained_tasks`` (task ids) must leave untouched: the heads of
        the other tasks with a ``multi`` head; none otherwise."""
        if self.kind != "multi":
            return []
        trained = set(trained_tasks)
        return [p for t, head in enumerate(self.heads) if t not in trained for p in head.parameters()]

    def forward(self, features: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        if self.kind == "multi":
            logits = torch.stack([head(features) for head in self.heads], 1)  # [N, n_tasks, k]
            index = task_ids.view(-1, 1, 1).expand(-1, 1, self.classes_per_task)
            return logits.gather(1, index).squeeze(1)
        logits = self.linear(features)
        if self.kind == "incremental":
            units = torch.arange(logits.shape[-1], device=logits.device)
            unseen = units >= self.seen_tasks * self.classes_per_task
            return logits.masked_fill(unseen, float("-inf"))
        return logits


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden_sizes: list[int], dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks (32, 64 channels) and one hidden linear layer: the usual small CL CNN."""

    def __init__(self, in_channels: int, image_size: int, hidden: int, dropout: float):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        flat = 64 * (image_size // 4) ** 2
        self.fc = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout) if dropout > 0 else nn.Identity())
        self.out_features = hidden

    def forward(self, x):
        return self.fc(self.features(x))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """ResNet-18 with 20 base filters (Lopez-Paz & Ranzato 2017, GEM), with BatchNorm."""

    def __init__(self, in_channels: int, nf: int = 20):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, nf, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(nf)
        blocks, in_planes = [], nf
        for planes, stride in ((nf, 1), (2 * nf, 2), (4 * nf, 2), (8 * nf, 2)):
            blocks += [_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.out_features = 8 * nf

    def forward(self, x):
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class ContinualModel(nn.Module):
    """Normalise uint8 input, run the backbone, score with the scenario head."""

    def __init__(self, backbone: nn.Module, head: OutputHead, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.backbone = backbone
        self.head = head
        c = len(mean)
        # x_float = (x / 255 - mean) / std = x * scale + shift
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(std))).view(1, c, 1, 1), persistent=False)
        self.register_buffer("shift", (-torch.tensor(mean) / torch.tensor(std)).view(1, c, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        x = x.to(self.scale.dtype, copy=True).mul_(self.scale).add_(self.shift)  # in place on our own copy
        return self.head(self.backbone(x), task_ids)


def build_model(config: ModelConfig, *, input_shape: tuple[int, int, int], scenario: str, n_tasks: int,
                classes_per_task: int, mean: tuple[float, ...], std: tuple[float, ...]) -> ContinualModel:
    """The network ``config`` describes, for inputs of ``input_shape`` = (C, H, W)."""
    c, h, w = input_shape
    if config.name == "mlp":
        backbone = MLP(c * h * w, config.hidden_sizes, config.dropout)
    elif config.name == "cnn":
        backbone = SmallCNN(c, h, config.hidden_sizes[-1] if config.hidden_sizes else 256, config.dropout)
    elif config.name == "resnet18":
        backbone = ReducedResNet18(c)
    else:  # validated earlier; kept for direct callers
        raise ValueError(f"model.name: unknown model {config.name!r}")
    head = OutputHead(backbone.out_features, config.resolved_head(scenario), n_tasks, classes_per_task)
    return ContinualModel(backbone, head, mean, std)


__all__ = ["ContinualModel", "OutputHead", "MLP", "SmallCNN", "ReducedResNet18", "build_model"]
