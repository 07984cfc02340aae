"""The ε-weighted gradient accumulator of a shrinking step.

One flat fp32 buffer holds the gradient of every shared parameter at full size; ``grads[name]`` are views of it
shaped like the parameters. A subnet's gradient (the size of its active slices) is added in place into the active
slices, scaled by the term's weight, so a step computes DεpS eq. (4), ``G = ∇L_full + ε_t Σ_j ∇L_j``, without
materialising full-size zero tensors per subnet. The flat layout lets a distributed run all-reduce ``G`` once per step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["GradAccumulator"]


class GradAccumulator:
    """Full-size gradient buffers for ``params`` (name → tensor), as views of one flat ``dtype`` tensor."""

    def __init__(self, params: Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32):
        if not params:
            raise ValueError("GradAccumulator needs at least one parameter")
        devices = {p.device for p in params.values()}
        if len(devices) != 1:
            raise ValueError(f"all parameters must live on one device; got {sorted(map(str, devices))}")
        total = sum(p.numel() for p in params.values())
        self.flat = torch.zeros(total, dtype=dtype, device=devices.pop())
        self.grads: dict[str, Tensor] = {}
        offset = 0
        for name, p in params.items():
            self.grads[name] = self.flat[offset : offset + p.numel()].view(p.shape)
            offset += p.numel()
        self.touched: set[str] = set()
        self._checked: Mapping[str, Tensor] | None = None  # the mapping check() last passed (the trainer's, every step)

    def check(self, params: Mapping[str, Tensor]) -> None:
        """``ValueError`` unless ``params`` are the parameters this accumulator was built for (names and shapes).
        The mapping that passed last is not walked again."""
        if params is self._checked:
            return
        if params.keys() != self.grads.keys():
            missing, extra = sorted(params.keys() - self.grads.keys()), sorted(self.grads.keys() - params.keys())
            raise ValueError(
                "the accumulator was built for other parameters: "
                f"{len(missing)} not in it (e.g. {missing[:3]}), {len(extra)} of it not given (e.g. {extra[:3]})"
            )
        for name, p in params.items():
            if p.shape != self.grads[name].shape:
                raise ValueError(
                    f"the accumulator was built for other parameters: {name} is {list(self.grads[name].shape)} in it, "
                    f"{list(p.shape)} here"
                )
        self._checked = params

    def zero_(self) -> None:
        self.flat.zero_()
        self.touched.clear()

    def add_(self, grads: Mapping[str, Tensor], slices: Mapping[str, tuple], weight: float) -> None:
        """``G[name][slices[name]] += weight · grads[name]`` for every entry of ``grads`` (one foreach launch)."""
        names = list(grads)
        dst = [self.grads[n][slices[n]] if slices[n] else self.grads[n] for n in names]
        torch._foreach_add_(dst, [grads[n] for n in names], alpha=float(weight))
        self.touched.update(names)

    def sinks(self, names: list[str], slices: Mapping[str, tuple]) -> dict[str, Tensor]:
        """Views ``G[name][slices[name]]`` for kernels that add their own weighted gradient into the buffer (the
        Triton depthwise weight gradient); the names count as touched."""
        self.touched.update(names)
        return {n: self.grads[n][slices[n]] if slices[n] else self.grads[n] for n in names}

    def bind(self, named_parameters: Mapping[str, torch.nn.Parameter]) -> None:
        """Make each parameter's ``.grad`` the matching buffer view (the optimizer then reads ``G`` directly);
        parameters no term of the step reached get ``.grad = None`` so the optimizer leaves them alone."""
        for name, p in named_parameters.items():
            p.grad = self.grads[name] if name in self.touched else None
