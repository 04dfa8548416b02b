import pytest
import torch

from avfusion.model import (
    AudioEncoder,
    FusionModel,
    LossConfig,
    ModalityAttention,
    ModelConfig,
    VideoEncoder,
    fusion_loss,
)


def _inputs(b=3, n=32_000, t=4, s=64):
    g = torch.Generator().manual_seed(0)
    return (
        torch.rand(b, n, generator=g) * 2 - 1,
        torch.randint(0, 256, (b, t, s, s, 3), generator=g, dtype=torch.uint8),
    )


def test_encoders_declare_their_output_size():
    wave, frames = _inputs()
    for frontend in ("gabor", "conv"):
        assert AudioEncoder(16, frontend, n_filters=24)(wave).shape == (3, AudioEncoder(16).out_dim)
    assert VideoEncoder()(frames).shape == (3, VideoEncoder.out_dim)
    a, v = torch.randn(3, 8), torch.randn(3, 8)
    fused, w, scores = ModalityAttention(8, 8, 8)(a, v)
    assert fused.shape == (3, 8) and w.shape == (3, 2) and scores.shape == (3, 2)


def test_fusion_outputs_and_attention_sum_to_one():
    torch.manual_seed(0)
    model = FusionModel(ModelConfig(num_classes=5, embed_dim=32, audio_width=16)).eval()
    out = model(*_inputs())
    assert (
        out.logits.shape == (3, 5) and out.audio_logits.shape == (3, 5) and out.video_logits.shape == (3, 5)
    )
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.weights.sum(dim=1), torch.ones(3))
    assert ((out.weights > 0) & (out.weights < 1)).all()
    feats = model.forward_features(*_inputs())
    assert feats.a.shape == feats.v.shape == (3, 32)
    assert feats.audio_evidence.shape == feats.video_evidence.shape == (3, 2)
    torch.testing.assert_close(model.forward_head(*feats).logits, out.logits)


def test_a_shared_head_makes_the_fused_logits_the_weighted_sum_of_the_modalities():
    """With ``shared_head`` one classifier serves all three: logits = w_a·head(a) +
    w_v·head(v) exactly (it is linear and the weights sum to 1), so a weight near 0
    leaves exactly the other modality's prediction."""
    torch.manual_seed(0)
    model = FusionModel(ModelConfig(num_classes=5, embed_dim=32, audio_width=16)).eval()
    assert model.audio_head is None and model.video_head is None
    out = model(*_inputs())
    w = out.weights
    torch.testing.assert_close(out.logits, w[:, :1] * out.audio_logits + w[:, 1:] * out.video_logits)
    separate = FusionModel(ModelConfig(num_classes=5, embed_dim=32, audio_width=16, shared_head=False)).eval()
    out = separate(*_inputs())
    assert separate.audio_head is not None
    assert not torch.allclose(
        out.logits, out.weights[:, :1] * out.audio_logits + out.weights[:, 1:] * out.video_logits
    )


def test_evidence_features_tell_dead_streams_from_live_ones():
    """Muted audio sits at the energy floor with no spread; black frames have no pixel
    spread; a frozen stream no spread over time, while its pooled features equal a live
    frame's. The scores read these, so a dead stream is recognisable whatever the
    encoder learned."""
    from avfusion.model import AudioEncoder, VideoEncoder

    wave, frames = _inputs()
    live_a = AudioEncoder.evidence(wave)
    muted = AudioEncoder.evidence(torch.zeros_like(wave))
    assert (muted[:, 0] < live_a[:, 0] - 0.5).all() and (muted[:, 1] == 0).all()
    enc = VideoEncoder().eval()
    frozen = frames[:, :1].expand_as(frames).contiguous()
    black = torch.zeros_like(frames)
    with torch.no_grad():
        ev = {
            name: enc.evidence(f, enc.forward_frames(f))
            for name, f in (("live", frames), ("frozen", frozen), ("black", black))
        }
    assert (ev["black"][:, 0] < ev["live"][:, 0] - 0.5).all()
    assert (ev["frozen"][:, 1] < ev["live"][:, 1] - 0.5).all()
    on = FusionModel(ModelConfig(num_classes=5, embed_dim=32, audio_width=16))
    off = FusionModel(ModelConfig(num_classes=5, embed_dim=32, audio_width=16, evidence=False))
    assert on.attention.audio_score.in_features == 34 and off.attention.audio_score.in_features == 32
    assert off.forward_features(wave, frames).video_evidence is None


def test_fused_weights_follow_the_formula():
    att = ModalityAttention(4, 4, 4)
    a, v = torch.randn(2, 4), torch.randn(2, 4)
    fused, w, out_scores = att(a, v)
    scores = torch.cat([att.audio_score(a), att.video_score(v)], dim=1)
    torch.testing.assert_close(out_scores, scores)
    torch.testing.assert_close(w, torch.softmax(scores, dim=1))
    torch.testing.assert_close(fused, w[:, :1] * a + w[:, 1:] * v)


def test_gradient_reaches_both_encoders():
    model = FusionModel(ModelConfig(num_classes=4, embed_dim=16, audio_width=8))
    out = model(*_inputs(b=2))
    loss, parts = fusion_loss(out, torch.tensor([1, 3]), LossConfig(aux_weight=0.3))
    assert set(parts) == {"fused", "audio", "video"}
    loss.backward()
    for part in (model.audio, model.video, model.attention.audio_score, model.attention.video_score):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("modality, weights", [("audio", [1.0, 0.0]), ("video", [0.0, 1.0])])
def test_unimodal_baselines(modality, weights):
    model = FusionModel(ModelConfig(num_classes=3, modalities=modality, embed_dim=16, audio_width=8)).eval()
    wave, frames = _inputs(b=2)
    out = model(wave if modality == "audio" else None, frames if modality == "video" else None)
    assert out.logits.shape == (2, 3)
    assert out.weights.tolist() == [weights, weights]
    assert (model.audio is None) == (modality == "video") and (model.video is None) == (modality == "audio")


def test_video_weights_from_a_file(tmp_path):
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    torch.save(state, tmp_path / "r18.pth")
    model = FusionModel(ModelConfig(num_classes=2, video_weights=str(tmp_path / "r18.pth")))
    torch.testing.assert_close(model.video.backbone.conv1.weight, state["conv1.weight"])
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a ResNet-18"):
        FusionModel(ModelConfig(num_classes=2, video_weights=str(tmp_path / "bad.pth")))
