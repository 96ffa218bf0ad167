"""NestModel as a whole: generator use, post_conv masking, encoder options, a few training steps."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from model_testing import REFERENCE_DIR, tiny_config

from nestkit.config import ModelConfig, load_config
from nestkit.core.errors import ConfigError
from nestkit.core.rng import torch_generator
from nestkit.model.attention import RelPositionalEncoding, RelPositionMultiHeadAttention
from nestkit.model.conformer import ConformerEncoder, layer_drop_probabilities
from nestkit.model.nest import NestModel
from nestkit.model.schedule import build_optimizer


def batch(seed: int = 0, lengths: tuple[int, ...] = (24000, 17000, 12000)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    audio = torch.zeros(len(lengths), max(lengths))
    for row, length in enumerate(lengths):
        t = torch.arange(length) / 16000
        audio[row, :length] = 0.2 * torch.sin(2 * torch.pi * (150 + 50 * row) * t) + 0.02 * torch.randn(
            length, generator=g
        )
    noisy = audio + 0.05 * torch.randn(audio.shape, generator=g) * (
        torch.arange(audio.shape[1]) < torch.tensor(lengths)[:, None]
    )
    lengths_t = torch.tensor(lengths)
    return audio, lengths_t, noisy, lengths_t.clone()


def test_a_generator_is_required_to_mask_or_train():
    model = NestModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="generator"):
        model(*batch(), apply_mask=True)
    with torch.no_grad():
        out = model(*batch(), apply_mask=False)  # eval without masking draws nothing
    assert torch.all(out.masks == 0)
    with pytest.raises(ValueError, match="generator"):
        model.train()(*batch(), apply_mask=False)


def test_a_hand_made_config_without_derived_fields_is_refused():
    with pytest.raises(ValueError, match="config_from_dict"):
        NestModel(ModelConfig())


@pytest.mark.parametrize(
    "section, field", [("quantizer", "code_dim"), ("quantizer", "num_books"), ("decoder", "num_classes")]
)
def test_each_derived_field_missing_from_a_hand_edited_config_is_named(section, field):
    """These three were once not checked: a config without them failed deep in torch with a TypeError."""
    cfg = tiny_config()
    setattr(getattr(cfg, section), field, None)
    with pytest.raises(ValueError, match=rf"got None for {section}\.{field}\)\. Build it with"):
        NestModel(cfg)


def test_output_shapes_follow_nemo():
    model = NestModel(tiny_config(num_books=2)).eval()
    with torch.no_grad():
        out = model(*batch(), generator=torch.Generator().manual_seed(0))
    frames = 24000 // 160 + 1  # 151, padded to 160
    assert out.masks.shape == (3, 80, 160)
    assert out.tokens.shape == (3, 20, 2) and out.log_probs.shape == (3, 20, 64, 2)
    assert out.encoded_len.tolist() == [19, 14, 10] and frames == 151
    torch.testing.assert_close(out.log_probs.exp().sum(dim=2), torch.ones(3, 20, 2))


def test_masks_and_dither_come_from_the_generator_alone():
    model = NestModel(
        tiny_config(
            preprocessor={"dither": 1e-5}, encoder={"dropout": 0.0, "dropout_att": 0.0, "dropout_pre_encoder": 0.0}
        )
    )
    model.train()
    torch.manual_seed(0)
    a = model(*batch(), generator=torch_generator(0, "model", 17))
    torch.manual_seed(123)  # global RNG state plays no part once dropout is off
    b = model(*batch(), generator=torch_generator(0, "model", 17))
    c = model(*batch(), generator=torch_generator(0, "model", 18))
    assert torch.equal(a.masks, b.masks) and torch.equal(a.log_probs, b.log_probs)
    assert not torch.equal(a.masks, c.masks)


def test_without_masking_the_loss_is_zero_and_counts_no_frame():
    model = NestModel(tiny_config()).eval()
    with torch.no_grad():
        result = model.loss(model(*batch(), apply_mask=False))
    assert result.loss.item() == 0.0 and int(result.num_masked_frames) == 0


def test_post_conv_masks_subsampled_frames_and_keeps_nemos_key_layout():
    cfg = tiny_config(mask_position="post_conv", masking={"mask_prob": 0.3})
    model = NestModel(cfg).train()
    assert model.mask_processor.block_size == 40 // 8  # block_size counts mel frames, as in NeMo
    assert model.quantizer.proj.in_features == 32 and model.combine_time_steps == 1
    keys = list(model.state_dict())
    assert "pre_encoder.pre_encode.out.weight" in keys and "encoder.pre_encode.masking.mask_embedding" in keys
    assert model.encoder.pre_encode is model.pre_encoder and model.pre_encoder.masking is model.mask_processor
    out = model(*batch(), generator=torch.Generator().manual_seed(1))
    assert out.masks.shape == (3, 32, 20) and out.tokens.shape == (3, 20, 1)
    result = model.loss(out)
    assert int(result.num_masked_frames) > 0
    result.loss.backward()
    # NeMo detaches the masked subsampled features: the subsampling is not trained while masking
    assert all(p.grad is None and not p.requires_grad for p in model.pre_encoder.pre_encode.parameters())
    assert model.encoder.layers[0].feed_forward1.linear1.weight.grad is not None


def test_post_conv_keys_equal_nemos_post_conv_keys():
    reference = torch.load(REFERENCE_DIR / "post_conv.state_dict.pt", weights_only=True)
    cfg = load_config(REFERENCE_DIR / "post_conv.config.yaml").config.model
    assert list(NestModel(cfg).state_dict()) == list(reference)


def test_post_conv_block_size_below_one_encoder_frame_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        NestModel(tiny_config(mask_position="post_conv", masking={"block_size": 4}))


def test_stochastic_depth_probabilities_follow_nemo_and_drops_come_from_the_generator():
    assert layer_drop_probabilities(4, 0.3, "linear", 1) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert layer_drop_probabilities(4, 0.3, "uniform", 2) == [0.0, 0.0, 0.3, 0.3]
    with pytest.raises(ValueError):
        layer_drop_probabilities(4, 1.0, "linear", 1)
    cfg = tiny_config(
        encoder={
            "n_layers": 4,
            "stochastic_depth_drop_prob": 0.9,
            "dropout": 0.0,
            "dropout_att": 0.0,
            "dropout_pre_encoder": 0.0,
        }
    )
    encoder = NestModel(cfg).encoder.train()
    x, lengths = torch.randn(2, 10, 32), torch.tensor([10, 7])
    a, _ = encoder.forward_subsampled(x, lengths, torch.Generator().manual_seed(4))
    b, _ = encoder.forward_subsampled(x, lengths, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    encoder.eval()
    with torch.no_grad():
        assert torch.equal(encoder.forward_subsampled(x, lengths)[0], encoder.forward_subsampled(x, lengths)[0])


def test_stochastic_depth_draws_once_per_droppable_layer_in_order_as_nemo_does():
    # NeMo draws torch.rand(1) after each layer whose probability is above 0; layers before
    # stochastic_depth_start_layer draw nothing, so the first draw decides layer 4 here
    cfg = tiny_config(
        encoder={"n_layers": 5, "stochastic_depth_drop_prob": 0.5, "stochastic_depth_start_layer": 3, "dropout": 0.0}
    )
    encoder = NestModel(cfg).encoder.train()
    assert encoder.layer_drop_probs == [0.0, 0.0, 0.0, 0.25, 0.5]
    decisions = set()
    for seed in range(16):
        reference = torch.Generator().manual_seed(seed)
        first, second = (torch.rand(1, generator=reference).item() for _ in range(2))
        generator = torch.Generator().manual_seed(seed)
        drops = encoder._draw_layer_drops(generator)
        assert drops == [False, False, False, first < 0.25, second < 0.5]
        assert torch.equal(generator.get_state(), reference.get_state())  # two draws, no more
        decisions.add(tuple(drops))
    assert len(decisions) > 1


def test_shared_positional_biases_and_output_projection():
    model = NestModel(tiny_config(encoder={"untie_biases": False, "feat_out": 24}))
    layers = model.encoder.layers
    assert layers[0].self_attn.pos_bias_u is layers[1].self_attn.pos_bias_u
    assert "encoder.layers.1.self_attn.pos_bias_u" in model.state_dict()
    assert model.encoder.out_proj.out_features == 24 and model.decoder.decoder_layers[0].in_channels == 24


def test_padding_does_not_change_valid_frames():
    model = NestModel(tiny_config()).eval()
    audio, lengths, noisy, noisy_len = batch(lengths=(16000, 9000))
    wider = [torch.nn.functional.pad(x, (0, 4000)) for x in (audio, noisy)]
    with torch.no_grad():
        a = model(audio, lengths, noisy, noisy_len, apply_mask=False)
        b = model(wider[0], lengths, wider[1], noisy_len, apply_mask=False)
    valid = int(a.encoded_len[1])
    torch.testing.assert_close(a.log_probs[1, :valid], b.log_probs[1, :valid], atol=1e-5, rtol=0)


def test_a_few_adamw_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny_config(
        masking={"mask_prob": 0.2}, encoder={"dropout": 0.0, "dropout_att": 0.0, "dropout_pre_encoder": 0.0}
    )
    model = NestModel(cfg).train()
    cfg.optim.lr = 1e-3
    cfg.optim.sched = None
    optimizer = build_optimizer(model, cfg.optim)
    data = batch(lengths=(16000, 12000))
    losses = []
    for _ in range(10):
        result = model.loss(model(*data, generator=torch_generator(0, "test", 0)))  # same masks every step
        optimizer.zero_grad()
        result.loss.backward()
        optimizer.step()
        losses.append(result.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert not model.quantizer.proj.weight.requires_grad  # targets stay fixed


def test_attention_avoids_float16_under_autocast_as_nemo_does():
    torch.manual_seed(0)
    attention = RelPositionMultiHeadAttention(4, 64, 0.0, True).eval()
    x, pos_emb = RelPositionalEncoding(64, 100, 8.0, 0.0, 0.0)(torch.randn(2, 30, 64))
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[1, 20:] = True
    exact = attention(x, pos_emb, pad)
    with torch.autocast("cpu", dtype=torch.float16):
        low = attention(x, pos_emb, pad)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), exact, atol=0.1 * exact.abs().max().item(), rtol=0)
    assert torch.equal(exact[1, 20:], attention.linear_out.bias.expand(10, 64))  # padded queries: bias only


def test_frame_counts_not_divisible_by_the_subsampling_factor_work_end_to_end():
    model = NestModel(tiny_config(preprocessor={"pad_to": 0}, masking={"mask_prob": 0.2})).eval()
    audio, lengths, noisy, noisy_len = batch(lengths=(16500, 12000))  # 104 feature frames: 13 x 8
    audio, noisy = audio[:, :16340], noisy[:, :16340]  # 103 frames: NeMo could not reshape these
    lengths = noisy_len = torch.tensor([16340, 12000])
    with torch.no_grad():
        out = model(audio, lengths, noisy, noisy_len, generator=torch.Generator().manual_seed(0))
        result = model.loss(out)
    assert out.masks.shape[-1] == 103 and out.tokens.shape[1] == 13 and out.log_probs.shape[1] == 13
    assert torch.isfinite(result.loss) and int(result.num_masked_frames) > 0


@pytest.mark.parametrize(
    "model,match",
    [
        ({"quantizer": {"time_ahead": True}}, "model.quantizer.time_ahead: not supported"),
        ({"encoder": {"d_model": 33, "n_heads": 3}}, "encoder.d_model: must be even"),
        (
            {"encoder": {"subsampling_conv_chunking_factor": 3}},
            r"subsampling_conv_chunking_factor: unsupported \(expected -1, 1",
        ),
        ({"preprocessor": {"n_fft": 256}}, r"preprocessor.n_fft: shorter than the window \(expected at least 400"),
    ],
)
def test_settings_nemo_cannot_run_either_fail_naming_the_key(model, match):
    with pytest.raises(ConfigError, match=match):  # up front, with every other config problem
        tiny_config(**model)
    # a config built by hand, past validation, is refused by the model itself
    section, values = next(iter(model.items()))
    cfg = tiny_config()
    setattr(cfg, section, dataclasses.replace(getattr(cfg, section), **values))
    with pytest.raises(ValueError, match=match):
        NestModel(cfg)


@pytest.mark.parametrize("factor", [-1, 1, 2, 8])
def test_every_chunking_factor_nemo_accepts_builds(factor):
    NestModel(tiny_config(encoder={"subsampling_conv_chunking_factor": factor}))


def test_nemos_other_spellings_of_contexts_are_accepted():
    """`conv_context_size: causal` is NeMo's [kernel - 1, 0]; `att_context_size: [[-1, -1]]` is a
    multi-context list holding only full context."""
    cfg = tiny_config(encoder={"conv_context_size": "causal", "att_context_size": [[-1, -1]], "conv_kernel_size": 5})
    assert cfg.encoder.conv_context_size == [4, 0] and cfg.encoder.att_context_size == [-1, -1]
    assert NestModel(cfg).encoder.layers[0].conv.context == (4, 0)
    with pytest.raises(ConfigError, match=r"att_context_size: limited attention context is not supported"):
        tiny_config(encoder={"att_context_size": [[-1, -1], [70, 13]]})


def test_causal_conv_context_in_a_config_built_by_hand():
    """An EncoderConfig made by hand keeps `conv_context_size: causal` (config.derive never ran): the
    encoder reads it as NeMo does, [kernel - 1, 0], rather than indexing into the string."""
    encoder = dataclasses.replace(tiny_config().encoder, conv_context_size="causal", conv_kernel_size=5)
    assert ConformerEncoder(encoder).layers[0].conv.context == (4, 0)
