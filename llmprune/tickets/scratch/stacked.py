"""K copies of one network trained as one: the stacked model behind ``VisionDomain.train_many``.

Independent lottery-ticket jobs (the trials of a round, a round's controls beside its ticket)
have the same architecture, so their weights stack into [K, ...] tensors and activations travel
as [K, batch, ...]: a fully connected layer is one batched matmul (``baddbmm`` over
[K, batch, in] x [K, in, out]), ReLU and max-pooling act on the stacked activations as they are,
and the convolutional part runs once per job on its slices of the stacked weights. Every job keeps its own weights, data, loss and gradients: no
operation mixes two jobs, so one job's values (a divergence, a NaN) never reach another's.

Only plain ``nn.Sequential`` stacks of Flatten / Linear / Conv2d / ReLU / MaxPool2d without
buffers stack (every preset's network); ``stackable`` says whether a model does, and anything
else trains one job at a time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STACKABLE = (nn.Flatten, nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d)


def stackable(model: nn.Module) -> bool:
    """A plain Sequential of the layers this module knows, with no buffers (no batch norm)."""
    return (isinstance(model, nn.Sequential) and len(model) > 0
            and all(type(layer) in STACKABLE for layer in model)
            and not any(True for _ in model.buffers())
            and all(layer.start_dim == 1 and layer.end_dim == -1 for layer in model if isinstance(layer, nn.Flatten)))


class StackedNet:
    """The weights of K models of one architecture as [K, ...] leaf tensors, and their forward pass."""

    def __init__(self, models: list[nn.Module]):
        if not models or not all(stackable(m) for m in models):
            raise ValueError("only plain Sequential stacks of Flatten/Linear/Conv2d/ReLU/MaxPool2d stack")
        self.template = models[0]
        self.jobs = len(models)
        # fully connected weights are kept as [K, in, out]: the forward product and the weight
        # gradient (activations^T x output gradients) then come out in storage order, where
        # [K, out, in] would cost a transposed copy of every gradient at every step
        self.transposed = {f"{i}.weight" for i, layer in enumerate(self.template) if isinstance(layer, nn.Linear)}
        self.params: dict[str, torch.Tensor] = {}
        for name, _ in self.template.named_parameters():
            stacked = self.stack(name, [dict(m.named_parameters())[name].detach() for m in models])
            self.params[name] = stacked.contiguous().requires_grad_(True)

    def stack(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        """K tensors shaped like the model's ``name`` as one tensor in this net's storage layout
        (also for masks); a new tensor."""
        stacked = torch.stack(tensors)
        return stacked.transpose(1, 2).contiguous() if name in self.transposed else stacked

    def unstack(self, name: str, job: int) -> torch.Tensor:
        """Job ``job``'s ``name`` in the model's own layout (a view)."""
        value = self.params[name][job]
        return value.t() if name in self.transposed else value

    # -- forward ---------------------------------------------------------------------
    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Outputs [K, batch, classes]; ``x`` is [K, batch, ...] (each job its own batch) or, with
        ``shared``, [batch, ...] seen by every job (evaluation)."""
        # h: one tensor for all jobs ([K, batch, ...], or [batch, ...] while ``shared``), or a
        # list of per-job tensors through the convolutional part
        h: torch.Tensor | list[torch.Tensor] = x
        for index, layer in enumerate(self.template):
            weight = self.params.get(f"{index}.weight")
            bias = self.params.get(f"{index}.bias")
            if isinstance(layer, nn.Conv2d):
                # a convolution per job, and its ReLU and pooling on that job's own activations
                # until the next Flatten: measured faster on CPU than one grouped convolution
                # over all jobs (whose activations no longer fit the caches) for Conv-2
                if not isinstance(h, list):
                    h = [h] * self.jobs if shared else list(h.unbind(0))
                    shared = False
                biases = [None] * self.jobs if bias is None else bias.unbind(0)
                h = [F.conv2d(x_k, w_k, b_k, layer.stride, layer.padding, layer.dilation, layer.groups)
                     for x_k, w_k, b_k in zip(h, weight.unbind(0), biases)]
            elif isinstance(layer, nn.ReLU):
                h = [F.relu(h_k) for h_k in h] if isinstance(h, list) else F.relu(h)
            elif isinstance(layer, nn.MaxPool2d):
                pool = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
                h = [F.max_pool2d(h_k, *pool) for h_k in h] if isinstance(h, list) else \
                    F.max_pool2d(h, *pool) if shared else F.max_pool2d(h.flatten(0, 1), *pool).unflatten(0, h.shape[:2])
            elif isinstance(layer, nn.Flatten):
                if isinstance(h, list):
                    h = torch.stack([h_k.flatten(1) for h_k in h])
                else:
                    h = h.flatten(1) if shared else h.flatten(2)
            elif isinstance(layer, nn.Linear):
                if isinstance(h, list):
                    h = torch.stack(h)
                if shared:
                    # one GEMM for all jobs: [batch, in] x [in, K * out]
                    out = h @ weight.transpose(0, 1).reshape(weight.shape[1], -1)
                    if bias is not None:
                        out += bias.reshape(-1)
                    h, shared = out.view(h.shape[0], self.jobs, -1).transpose(0, 1), False
                else:
                    h = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, weight)
        if isinstance(h, list):
            return torch.stack(h)
        if shared:  # a network with no weights at all: every job the same
            h = h.unsqueeze(0).expand(self.jobs, *h.shape)
        return h

    # -- one job's view --------------------------------------------------------------
    def job_state(self, job: int) -> dict[str, torch.Tensor]:
        """Job ``job``'s weights under the template's parameter names (copies)."""
        return {name: self.unstack(name, job).detach().clone() for name in self.params}

    @torch.no_grad()
    def write_back(self, models: list[nn.Module]) -> None:
        """Each job's trained weights into its own model."""
        for job, model in enumerate(models):
            for name, param in model.named_parameters():
                param.copy_(self.unstack(name, job))
