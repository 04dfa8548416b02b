"""Per-clip signals that a stream is lost, and how well each tells corrupted clips from clean.

The attention can move weight off a stream only if something it reads on that clip
shows the stream is lost. For a stream degraded by a corruption, each signal below is
computed per clip from what a deployed model has: its attention weight, the stream's own
head, the statistics of the training clips' embeddings, and a second model of the same
stream (the unimodal model trained beside it). Its AUROC against the same clips clean
says how well that signal could tell the two apart: 0.5 is blind, 1.0 puts every
corrupted clip above every clean one; its false alarms, the share of clean clips it also
flags to catch three quarters of the corrupted ones, are what halving the stream's weight
from it would cost clean clips. Every signal is oriented so that higher means "more lost".

``SignalTally.gates`` measures that cost instead of estimating it: a gate that drops the
stream (its weight to 0, the prediction the other stream's own head) on every clip whose
signal is above the clean clips' top ``rate``, and what that does to the destroyed
stream's weight, to the fused model under the corruption and to clean accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from avfusion.evaluation.conditions import NORMAL, Condition
from avfusion.evaluation.run import as_numpy
from avfusion.model import Features, FusionModel, FusionOutput

# name → what it is; the keys are the table's columns
SIGNALS = {
    "weight": "the attention's weight on the stream, negated",
    "head sure": "the stream's own head's top probability, negated (the confidence QMF reads)",
    "head energy": "the log-sum-exp of that head's logits, negated (QMF's energy)",
    "distance": "Mahalanobis distance of the stream's embedding to the training clips' (Lee et al., 2018)",
    "disagreement": "Jensen-Shannon divergence of the own head from the unimodal model (an ensemble of two)",
}
MODALITIES = ("audio", "video")
# The shares of clean clips a gate drops the stream on (``SignalTally.gates``).
GATE_RATES = tuple(round(0.05 * i, 2) for i in range(1, 11))


@dataclass
class Gaussian:
    """One stream's training embeddings as a Gaussian: mean and (shrunk) precision."""

    mean: np.ndarray
    precision: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, shrink: float = 0.1) -> Gaussian:
        """``shrink``: the covariance is pulled this far towards its mean variance, since a
        few hundred clips do not determine a 64-dimensional covariance."""
        x = np.asarray(x, dtype=np.float64)
        if not len(x):
            raise ValueError("a Gaussian needs at least one embedding (no training clips were read)")
        cov = np.atleast_2d(np.cov(x, rowvar=False)) if len(x) > 1 else np.zeros((x.shape[1], x.shape[1]))
        scale = max(float(np.trace(cov)) / len(cov), 1e-6)
        cov = (1 - shrink) * cov + shrink * scale * np.eye(len(cov))
        return cls(x.mean(axis=0), np.linalg.inv(cov))

    def distance(self, x: np.ndarray) -> np.ndarray:
        d = np.asarray(x, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, self.precision, d), 0.0))


def auroc(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """P(a corrupted clip's signal > a clean clip's), ties counted half (Mann-Whitney U)."""
    clean, corrupted = np.asarray(clean, dtype=np.float64), np.asarray(corrupted, dtype=np.float64)
    if not len(clean) or not len(corrupted) or np.isnan(clean).any() or np.isnan(corrupted).any():
        return float("nan")  # a signal that failed on some clip is not evidence either way
    above = (corrupted[:, None] > clean[None, :]).mean()
    tied = (corrupted[:, None] == clean[None, :]).mean()
    return float(above + tied / 2)


def false_alarms(clean: np.ndarray, corrupted: np.ndarray, caught: float = 0.75) -> float:
    """The share of clean clips at or above the threshold that catches ``caught`` of the
    corrupted ones: what moving weight off that many corrupted clips costs clean clips."""
    clean, corrupted = np.asarray(clean, dtype=np.float64), np.asarray(corrupted, dtype=np.float64)
    if not len(clean) or not len(corrupted) or np.isnan(clean).any() or np.isnan(corrupted).any():
        return float("nan")
    # the highest threshold that at least ``caught`` of the corrupted clips reach
    threshold = np.sort(corrupted)[::-1][max(math.ceil(caught * len(corrupted)), 1) - 1]
    return float((clean >= threshold).mean())


def _inputs(samples: list[dict], model: FusionModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's waveforms and frames on the model's device."""
    device = next(model.parameters()).device
    wave = torch.from_numpy(np.stack([s["waveform"] for s in samples])).to(device)
    return wave, torch.from_numpy(np.stack([s["frames"] for s in samples])).to(device)


@torch.no_grad()
def fit_embeddings(model: FusionModel, batches: Iterable[list[dict]]) -> dict[str, Gaussian]:
    """Each stream's Gaussian over ``batches`` (the model's training clips, clean)."""
    model.eval()
    rows: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    for samples in batches:
        samples = [as_numpy(s) for s in samples]
        f = model.forward_features(*_inputs(samples, model))
        assert f.a is not None and f.v is not None, "signals are a fused model's"
        rows["audio"].append(f.a.float().cpu().numpy())
        rows["video"].append(f.v.float().cpu().numpy())
    if not rows["audio"]:
        raise ValueError("no training clips to fit the embeddings' Gaussians on")
    return {m: Gaussian.fit(np.concatenate(x)) for m, x in rows.items()}


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    m = (p + q) / 2

    def h(x: torch.Tensor) -> torch.Tensor:
        return -(x * torch.log(x.clamp_min(1e-12))).sum(dim=1)

    return (h(m) - (h(p) + h(q)) / 2).numpy()


def stream_signals(
    gaussians: Mapping[str, Gaussian],
    features: Features,
    out: FusionOutput,
    alone: Mapping[str, torch.Tensor],
    streams: Iterable[str] = MODALITIES,
) -> dict[str, dict[str, np.ndarray]]:
    """{stream: {signal: (B,)}} from a fused model's ``features`` and outputs on one batch;
    ``alone``: modality → the logits of the model trained on that stream alone (a missing
    one leaves its disagreement out); a model trained without its own heads has no head
    signals."""
    assert features.a is not None and features.v is not None, "signals are a fused model's"
    signals: dict[str, dict[str, np.ndarray]] = {}
    for m in streams:
        audio = m == "audio"
        i, emb, logits = (0, features.a, out.audio_logits) if audio else (1, features.v, out.video_logits)
        s = {
            "weight": -out.weights[:, i].float().cpu().numpy(),
            "distance": gaussians[m].distance(emb.float().cpu().numpy()),
        }
        if logits is not None:
            prob = torch.softmax(logits.float(), dim=1).cpu()
            s["head sure"] = -prob.amax(dim=1).numpy()
            s["head energy"] = -torch.logsumexp(logits.float(), dim=1).cpu().numpy()
            if m in alone:
                s["disagreement"] = js_divergence(prob, torch.softmax(alone[m].float(), dim=1).cpu())
        signals[m] = s
    return signals


@torch.no_grad()
def clip_signals(
    model: FusionModel,
    gaussians: Mapping[str, Gaussian],
    unimodal: Mapping[str, FusionModel],
    wave: torch.Tensor,
    frames: torch.Tensor,
    streams: Iterable[str] = MODALITIES,
) -> dict[str, dict[str, np.ndarray]]:
    """``stream_signals`` of ``model`` on one batch, running it and the ``unimodal`` models
    (modality → the model trained on that stream alone) in eval mode."""
    features = model.eval().forward_features(wave, frames)
    alone = {
        m: u.eval()(wave if m == "audio" else None, frames if m == "video" else None).logits
        for m, u in unimodal.items()
    }
    return stream_signals(gaussians, features, model.forward_head(*features), alone, streams)


class SignalTally:
    """Collects the signals while ``evaluate_conditions`` runs (its ``observe``): of the
    model named ``fused``, with the unimodal models beside it for the disagreement; clean
    clips for both streams, a corruption's for its own stream. ``figures`` compares them;
    ``gates`` measures what dropping the stream from each signal would do."""

    def __init__(self, gaussians: Mapping[str, Gaussian], fused: str = "fused") -> None:
        self.gaussians, self.fused = gaussians, fused
        self.values: dict[Condition, dict[str, dict[str, list[np.ndarray]]]] = {}
        # per condition and stream, per clip: the stream's weight, whether the fused
        # model, the other stream's own head (the fused model with this stream dropped)
        # and the other stream's unimodal model are right
        self.outcomes: dict[Condition, dict[str, dict[str, list[np.ndarray]]]] = {}

    def __call__(
        self, cond: Condition, outputs: dict[str, tuple[Features, FusionOutput]], target: torch.Tensor
    ) -> None:
        if cond != NORMAL and cond.modality is None:
            return  # no single stream to compare
        streams = MODALITIES if cond == NORMAL else (str(cond.modality),)
        features, out = outputs[self.fused]
        target = target.cpu()
        alone = {  # the unimodal models: one embedding each
            ("audio" if f.a is not None else "video"): o.logits
            for name, (f, o) in outputs.items()
            if name != self.fused and (f.a is None) != (f.v is None)
        }
        for m, by_name in stream_signals(self.gaussians, features, out, alone, streams).items():
            for name, v in by_name.items():
                self.values.setdefault(cond, {}).setdefault(m, {}).setdefault(name, []).append(v)
            other = "video" if m == "audio" else "audio"
            fallback = out.video_logits if m == "audio" else out.audio_logits
            if fallback is None or other not in alone:
                continue  # no own heads, or no unimodal model to hold the gate against
            right = {  # the stream's weight is its "weight" signal, negated
                "fused": (out.logits.argmax(dim=1).cpu() == target).numpy(),
                "fallback": (fallback.argmax(dim=1).cpu() == target).numpy(),
                "other only": (alone[other].argmax(dim=1).cpu() == target).numpy(),
            }
            for name, v in right.items():
                self.outcomes.setdefault(cond, {}).setdefault(m, {}).setdefault(name, []).append(v)

    def _corrupted(self, table: dict) -> Iterable[tuple[Condition, str, dict, dict]]:
        """(condition, its stream, its clips' arrays, the same clips' clean arrays)."""
        for cond, by_stream in table.items():
            if cond == NORMAL:
                continue
            ((stream, hit),) = by_stream.items()
            clean = table[NORMAL][stream]
            yield (
                cond,
                stream,
                {k: np.concatenate(v) for k, v in hit.items()},
                {k: np.concatenate(v) for k, v in clean.items()},
            )

    def figures(self) -> dict[Condition, dict[str, dict[str, float]]]:
        """{condition: {"auroc" | "false alarms": {signal: value}}} for every condition
        that corrupted one stream, against the same clips clean."""
        return {
            cond: {
                "auroc": {k: auroc(clean[k], hit[k]) for k in clean},
                "false alarms": {k: false_alarms(clean[k], hit[k]) for k in clean},
            }
            for cond, _, hit, clean in self._corrupted(self.values)
        }

    def gates(self, rates: Iterable[float] = GATE_RATES) -> dict[Condition, dict[str, dict[float, dict]]]:
        """{condition: {signal: {rate: figures}}}: the corrupted stream dropped on every
        clip whose signal is above the ``rate`` quantile's threshold of the same clips
        clean (so about ``rate`` of clean clips lose it): "weight share", its mean weight
        under the corruption ÷ on clean clips (the destroyed-stream goal: ≤ 0.5); "fused /
        other-only", the gated model's top-1 under the corruption ÷ the other stream's
        unimodal model's (goal ≥ 0.9); "clean top1", the gated model on clean clips (the
        clean goal's side). Rate 0 is the model as it is."""
        out: dict[Condition, dict[str, dict[float, dict]]] = {}
        for cond, stream, hit, clean in self._corrupted(self.outcomes):
            signals, reference = self.values[cond][stream], self.values[NORMAL][stream]
            w_hit, w_clean = -np.concatenate(signals["weight"]), -np.concatenate(reference["weight"])
            other = float(hit["other only"].mean())
            for name in signals:
                s_hit, s_clean = np.concatenate(signals[name]), np.concatenate(reference[name])
                if np.isnan(s_hit).any() or np.isnan(s_clean).any():
                    continue
                for rate in (0.0, *rates):
                    threshold = np.quantile(s_clean, 1 - rate) if rate else np.inf
                    drop_hit, drop_clean = s_hit > threshold, s_clean > threshold
                    kept_clean = float((w_clean * ~drop_clean).mean())
                    gated = np.where(drop_hit, hit["fallback"], hit["fused"]).mean()
                    out.setdefault(cond, {}).setdefault(name, {})[rate] = {
                        "weight share": float((w_hit * ~drop_hit).mean()) / kept_clean
                        if kept_clean
                        else float("nan"),
                        "fused / other-only": float(gated) / other if other else float("nan"),
                        "clean top1": float(np.where(drop_clean, clean["fallback"], clean["fused"]).mean()),
                    }
        return out


def signal_aurocs(
    model: FusionModel,
    unimodal: Mapping[str, FusionModel],
    train_batches: Iterable[list[dict]],
    batches: list[list[dict]],
    conds: Iterable[Condition],
    seed: int = 0,
) -> dict[Condition, dict[str, dict[str, float]]]:
    """For every condition that corrupts one stream: each signal's AUROC on that stream
    (``"auroc"``) and its ``false_alarms`` at three quarters caught (``"false alarms"``),
    the held-out ``batches`` under the condition against the same clips clean, through
    ``evaluate_conditions`` (the bench passes a ``SignalTally`` to its own evaluation)."""
    from avfusion.evaluation.run import evaluate_conditions

    tally = SignalTally(fit_embeddings(model, train_batches))
    models = {"fused": model.eval(), **{f"{m}-only": u.eval() for m, u in unimodal.items()}}
    conds = list(conds)
    evaluate_conditions(models, batches, [NORMAL, *(c for c in conds if c != NORMAL)], seed, observe=tally)
    return tally.figures()
