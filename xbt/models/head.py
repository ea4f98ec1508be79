"""The projection head every adapter method shares: new-model embeddings -> unit vectors in the old space.

Stage 1 trains it (``xbt.method.stage1``), stage 2 fine-tunes it, and the training-free maps load a
closed-form matrix into its ``hidden=0`` form (``Projection.from_linear``).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import XBTError
from ..core.seeding import seeded

#: the most parameters a head may hold (2**31, 8 GiB in float32): far above any real head, far below a typo
MAX_PARAMETERS = 2**31


def check_head_shape(d_new: int, d_old: int, hidden: int) -> None:
    """Refuse head widths that are not ints, not positive (``hidden`` may be 0) or would allocate absurdly.

    Runs before any tensor is allocated, so a corrupt saved config fails at once with the numbers.
    """
    for name, value, low in (("d_new", d_new, 1), ("d_old", d_old, 1), ("hidden", hidden, 0)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise XBTError(
                f"projection {name}={value!r} must be an int >= {low}; check the head shapes you passed "
                "(or the adapter folder's xbt_config.json)"
            )
    d_new, d_old, hidden = int(d_new), int(d_old), int(hidden)
    count = d_new * d_old + (hidden * (d_new + 1) + hidden * d_old + d_old if hidden else 0)
    if count > MAX_PARAMETERS:
        raise XBTError(
            f"projection d_new={d_new}, d_old={d_old}, hidden={hidden} would hold {count:,} parameters, above "
            f"the {MAX_PARAMETERS:,} limit; the shapes are wrong: check them (or the adapter folder's xbt_config.json)"
        )


class Projection(nn.Module):
    """Maps new-model embeddings [n, d_new] to unit vectors in the old space [n, d_old].

    ``y = normalize(linear(x) + mlp(x))``: a linear path (Procrustes-initialised) plus a residual
    MLP whose output layer starts at zero. ``from_linear`` builds the ``hidden=0`` head that holds
    a closed-form map.
    """

    def __init__(self, d_new: int, d_old: int, hidden: int = 1024) -> None:
        check_head_shape(d_new, d_old, hidden)
        super().__init__()
        d_new, d_old, hidden = int(d_new), int(d_old), int(hidden)
        self.d_new, self.d_old, self.hidden = d_new, d_old, hidden
        self.linear = nn.Linear(d_new, d_old, bias=False)
        if hidden > 0:
            self.mlp = nn.Sequential(nn.Linear(d_new, hidden), nn.GELU(), nn.Linear(hidden, d_old))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)
        else:
            self.mlp = None

    @classmethod
    def from_linear(cls, weight: torch.Tensor) -> Projection:
        """A purely linear head (``hidden=0``) holding ``weight`` [d_old, d_new], in eval mode.

        Its throwaway initialisation draws from a private seeded stream, not the caller's RNG.
        """
        with seeded(0):
            proj = cls(weight.shape[1], weight.shape[0], hidden=0)
        with torch.no_grad():
            proj.linear.weight.copy_(weight)
        return proj.eval()

    def config(self) -> dict:
        """Constructor arguments, for saving."""
        return {"d_new": self.d_new, "d_old": self.d_old, "hidden": self.hidden}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project and L2-normalise."""
        if x.shape[-1] != self.d_new:
            raise XBTError(f"projection expects {self.d_new}-d new-model embeddings, got {x.shape[-1]}-d")
        y = self.linear(x)
        if self.mlp is not None:
            y = y + self.mlp(x)
        return F.normalize(y, dim=-1)

    @torch.no_grad()
    def in_chunks(self, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """``self(x)`` without gradients for many rows [n, d_new], ``chunk`` rows at a time so the
        MLP's hidden layer stays small; an empty input gives an empty [0, d_old]."""
        return (
            torch.cat([self(x[s : s + chunk]) for s in range(0, len(x), chunk)])
            if len(x)
            else x.new_zeros(0, self.d_old)
        )
