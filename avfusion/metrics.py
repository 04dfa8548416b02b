"""Classification counts: top-k hits and training's validation tally.

``topk_hits`` is how training's validation and the robustness evaluation
(``avfusion.evaluation.run.ConditionTally``) both count hits. ``Tally`` is the
validation's: sums stay tensors on the model's device, all-reduced over ranks and read
once, at the end, so validation costs no host sync per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def topk_hits(logits: torch.Tensor, target: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(2,) counts on the logits' device: [top-1 hits, top-k hits] (k capped at the class count)."""
    top = logits.float().topk(min(k, logits.shape[1]), dim=1).indices
    return torch.stack([(top[:, 0] == target).sum(), (top == target[:, None]).any(dim=1).sum()])


class Tally:
    """Running sums for ``num_classes`` classes, one float64 vector on ``device``:
    n, summed cross-entropy, top-1 hits, top-5 hits | per class: n, Σ w_audio, Σ w_video.
    A vector, so ranks combine it with one all-reduce (``DistEnv.all_reduce_sum``)."""

    HEAD = 4

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.c = num_classes
        self.sums = torch.zeros(self.HEAD + 3 * num_classes, dtype=torch.float64, device=device)

    def add(self, logits: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> None:
        """A batch of labelled clips: logits (B, C), attention weights (B, 2), targets (B,)."""
        c, s = self.c, self.sums
        logits, weights = logits.float(), weights.double()
        s[0] += len(target)
        s[1] += F.cross_entropy(logits, target, reduction="sum").double()
        s[2:4] += topk_hits(logits, target).double()
        s[4 : 4 + c].index_add_(0, target, torch.ones_like(weights[:, 0]))  # bincount syncs on CUDA
        s[4 + c : 4 + 2 * c].index_add_(0, target, weights[:, 0])
        s[4 + 2 * c :].index_add_(0, target, weights[:, 1])

    def summary(self, names: list[str], sums: list[float] | None = None) -> dict:
        """Means from ``sums`` (this tally's own, or an all-reduced copy of them)."""
        s = self.sums.tolist() if sums is None else sums
        c, n = self.c, s[0]
        if n == 0:
            return {"val_n": 0}
        per_n, per_a, per_v = s[4 : 4 + c], s[4 + c : 4 + 2 * c], s[4 + 2 * c :]
        return {
            "val_n": int(n),
            "val_loss": s[1] / n,
            "val_top1": s[2] / n,
            "val_top5": s[3] / n,
            "w_audio": sum(per_a) / n,
            "w_video": sum(per_v) / n,
            "w_audio_by_class": {names[i]: per_a[i] / per_n[i] for i in range(c) if per_n[i] > 0},
        }
