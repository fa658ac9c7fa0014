"""An exponential moving average of the weights, evaluated and saved beside the raw weights."""
from __future__ import annotations

import copy

import torch


class ModelEma:
    """`module` holds the average; `update(model)` after each optimizer step moves it towards `model`.

    The decay ramps up as (1 + n) / (10 + n) over the first updates, so that the average of a short run is not
    dominated by its random initialization.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs = [], []
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values()):
            if e.dtype.is_floating_point:
                mine.append(e)
                theirs.append(m.detach())
            else:
                e.copy_(m)
        torch._foreach_lerp_(mine, theirs, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
