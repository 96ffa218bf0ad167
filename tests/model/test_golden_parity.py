"""NestModel against NeMo 2.6.2's golden forward pass (tests/fixtures/golden, tiny config)."""

from __future__ import annotations

import json

import numpy as np
import torch
from model_testing import GOLDEN_DIR, t

from nestkit.model.loss import loss_frame_mask, masked_token_loss
from nestkit.model.masking import apply_frame_mask
from nestkit.model.nest import NestModel

ENCODER_ATOL = 1e-4
FEATURE_ATOL = 1e-5
LOSS_RTOL = 1e-5
GOLDEN_MASK_SEED = 1  # the golden masks were drawn right after torch.manual_seed(1)


def golden_keys() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (GOLDEN_DIR / "nest_tiny.state_dict.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        rows.append((key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip()), dtype))
    return rows


def test_state_dict_keys_shapes_dtypes_and_order_are_nemos(golden_config):
    model = NestModel(golden_config)
    ours = [(k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()]
    assert ours == golden_keys()


def test_golden_weights_load_strictly_and_parameter_counts_match(golden_config, golden_state, golden):
    model = NestModel(golden_config)
    model.load_state_dict(golden_state, strict=True)
    meta = json.loads(str(golden["meta_json"]))
    assert sum(p.numel() for p in model.parameters()) == meta["params_total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == meta["params_trainable"]


def test_filterbank_and_window_buffers_equal_nemos_exactly(golden_config, golden_state):
    model = NestModel(golden_config)  # buffers computed here, not loaded
    assert torch.equal(model.preprocessor.featurizer.fb, golden_state["preprocessor.featurizer.fb"])
    assert torch.equal(model.preprocessor.featurizer.window, golden_state["preprocessor.featurizer.window"])


def test_features_of_clean_and_noisy_audio_in_one_call(golden_model, golden):
    clean, clean_len, noisy, noisy_len = golden_model.preprocessor.forward_pair(
        t(golden["input_audio"]),
        t(golden["input_audio_len"]),
        t(golden["input_noisy_audio"]),
        t(golden["input_noisy_audio_len"]),
    )
    torch.testing.assert_close(clean, t(golden["clean_feats"]), atol=FEATURE_ATOL, rtol=0)
    torch.testing.assert_close(noisy, t(golden["noisy_feats"]), atol=FEATURE_ATOL, rtol=0)
    assert torch.equal(clean_len, t(golden["clean_feats_len"]))
    assert torch.equal(noisy_len, t(golden["noisy_feats_len"]))


def test_tokens_and_code_vectors_exactly(golden_model, golden):
    tokens = golden_model.quantizer(t(golden["clean_feats"]))
    assert torch.equal(tokens, t(golden["tokens"]))
    assert torch.equal(golden_model.quantizer.lookup(tokens), t(golden["quantizer_xq"]))


def test_masking_with_the_golden_masks_reproduces_masked_features(golden_model, golden):
    frames = t(golden["masks"][:, 0, :]).bool()
    masked, masks = apply_frame_mask(t(golden["noisy_feats"]), frames, golden_model.mask_processor.mask_embedding)
    assert torch.equal(masked, t(golden["masked_feats"]))
    assert torch.equal(masks, t(golden["masks"]))


def test_encoder_intermediates_and_log_probs_given_the_golden_masks(golden_model, golden):
    captured: dict[str, torch.Tensor] = {}
    encoder = golden_model.encoder

    def keep(name: str, index: int = 0):
        def hook(module, inputs, output) -> None:
            captured[name] = output[index] if isinstance(output, tuple) else output

        return hook

    encoder.pre_encode.register_forward_hook(keep("pre_encode_out"))
    encoder.pos_enc.register_forward_hook(keep("pos_enc_out", 0))
    encoder.pos_enc.register_forward_hook(keep("pos_emb", 1))
    for i, layer in enumerate(encoder.layers):
        layer.register_forward_hook(keep(f"layer_{i:02d}_out"))
    with torch.no_grad():
        encoded, encoded_len = encoder(t(golden["masked_feats"]), t(golden["noisy_feats_len"]))
        log_probs = golden_model.decoder(encoded)
    for name in ("pre_encode_out", "pos_enc_out", "pos_emb", "layer_00_out", "layer_01_out"):
        torch.testing.assert_close(captured[name], t(golden[name]), atol=ENCODER_ATOL, rtol=0, msg=name)
    torch.testing.assert_close(encoded, t(golden["encoded"]), atol=ENCODER_ATOL, rtol=0)
    torch.testing.assert_close(log_probs, t(golden["log_probs"]), atol=ENCODER_ATOL, rtol=0)
    assert torch.equal(encoded_len, t(golden["encoded_len"]))
    assert torch.equal(encoded_len, t(golden["pre_encode_len"]))


def test_loss_and_loss_frames_given_the_golden_tensors(golden):
    masks = t(golden["masks"])
    assert torch.equal(loss_frame_mask(masks, 8, 0.8), t(golden["loss_frame_mask"]))
    result = masked_token_loss(masks, t(golden["log_probs"]), t(golden["tokens"]), t(golden["encoded_len"]), 8, 0.8)
    torch.testing.assert_close(result.loss, t(golden["loss"]), rtol=LOSS_RTOL, atol=0)
    assert int(result.num_masked_frames) == int(golden["loss_frame_mask"].sum())


def test_full_forward_with_a_seeded_generator_reproduces_nemos_masks_and_outputs(golden_model, golden):
    generator = torch.Generator().manual_seed(GOLDEN_MASK_SEED)
    with torch.no_grad():
        out = golden_model(
            t(golden["input_audio"]),
            t(golden["input_audio_len"]),
            t(golden["input_noisy_audio"]),
            t(golden["input_noisy_audio_len"]),
            apply_mask=True,
            generator=generator,
        )
    assert torch.equal(out.masks, t(golden["masks"]))
    assert torch.equal(out.tokens, t(golden["tokens"]))
    torch.testing.assert_close(out.log_probs, t(golden["log_probs"]), atol=ENCODER_ATOL, rtol=0)
    loss = golden_model.loss(out)
    torch.testing.assert_close(loss.loss, t(golden["loss"]), rtol=LOSS_RTOL, atol=0)
    assert int(loss.num_masked_frames) == 32
    assert np.isclose(float(loss.loss), 5.868, atol=1e-3)
