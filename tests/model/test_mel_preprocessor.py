"""Mel features: the filterbank formula, framing, normalisation, padding, dither and the paired call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_testing import t

from nestkit.config import PreprocessorConfig
from nestkit.model.melscale import hz_to_mel, mel_to_hz, slaney_mel_filterbank
from nestkit.model.preprocessor import MelPreprocessor, normalize_features


def preprocessor(**changes: object) -> MelPreprocessor:
    cfg = PreprocessorConfig(sample_rate=16000, dither=0.0)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return MelPreprocessor(cfg).eval()


def test_slaney_scale_is_linear_below_1khz_and_logarithmic_above():
    np.testing.assert_allclose(hz_to_mel(np.array([0.0, 200.0 / 3, 1000.0])), [0.0, 1.0, 15.0], rtol=1e-12)
    # 27 mels per factor 6.4 above 1 kHz
    assert np.isclose(hz_to_mel(np.array([6400.0]))[0], 15.0 + 27.0)
    hz = np.array([0.0, 123.0, 999.0, 1000.0, 4321.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, rtol=1e-12)


def test_filterbank_triangles_have_unit_area_in_hz_and_cover_the_band():
    fb = slaney_mel_filterbank(16000, 512, 80).astype(np.float64)
    bin_hz = 16000 / 512
    assert fb.shape == (80, 257) and fb.min() >= 0
    # slaney normalisation: each triangle integrates to ~1 over Hz (narrow low ones only roughly)
    areas = fb.sum(axis=1) * bin_hz
    assert np.all(np.abs(areas - 1.0) < 0.15) and np.all(np.abs(areas[40:] - 1.0) < 0.02)
    assert np.all(fb.sum(axis=0)[1:-1] > 0)  # every inner FFT bin feeds some filter


def test_frame_count_follows_nemo_and_output_is_padded_to_a_multiple_of_pad_to():
    pre = preprocessor()
    audio = torch.randn(2, 16000) * 0.1
    lengths = torch.tensor([16000, 12345])
    feats, frames = pre(audio, lengths)
    assert frames.tolist() == [100, 77]  # length // hop
    assert feats.shape == (2, 80, 112)  # 16000 // 160 + 1 = 101 frames, padded to 112
    assert torch.all(feats[1, :, 77:] == 0.0) and torch.all(feats[0, :, 100:] == 0.0)


def test_pad_value_fills_frames_beyond_the_length():
    feats, frames = preprocessor(pad_value=-3.5)(torch.randn(1, 8000) * 0.1, torch.tensor([4000]))
    assert torch.all(feats[0, :, int(frames[0]) :] == -3.5)
    assert torch.all(feats[0, :, : int(frames[0])] != -3.5)


def test_exact_pad_gives_length_over_hop_frames_and_nemos_valid_count():
    pre = preprocessor(exact_pad=True, pad_to=0)
    feats, frames = pre(torch.randn(1, 16000) * 0.1, torch.tensor([16000]))
    assert feats.shape[-1] == 16000 // 160
    assert frames.tolist() == [(16000 + 2 * ((512 - 160) // 2) - 512) // 160]  # NeMo counts 99 valid


def test_per_feature_normalisation_uses_valid_frames_and_nemos_unbiased_std_plus_epsilon():
    x = torch.randn(2, 3, 10)
    frames = torch.tensor([10, 6])
    out = normalize_features(x, frames, "per_feature")
    valid = x[1, :, :6].double()
    expected = (valid - valid.mean(-1, keepdim=True)) / (valid.std(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(out[1, :, :6].double(), expected, atol=1e-6, rtol=0)
    one_frame = normalize_features(x, torch.tensor([1, 1]), "per_feature")
    assert torch.isfinite(one_frame).all()  # std of one frame is 0 (NeMo: nan -> 0) + epsilon


def test_all_features_normalisation_and_none():
    x = torch.randn(1, 4, 20)
    out = normalize_features(x, torch.tensor([20]), "all_features")
    torch.testing.assert_close(out.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert normalize_features(x, torch.tensor([20]), "none") is x


def test_log_guard_keeps_silence_finite():
    feats, _ = preprocessor(normalize="none")(torch.zeros(1, 4000), torch.tensor([4000]))
    assert torch.isfinite(feats).all()
    assert torch.allclose(feats[:, :, :25], torch.tensor(np.log(2.0**-24), dtype=torch.float32))


def test_pair_call_equals_two_separate_calls_bit_for_bit():
    pre = preprocessor()
    a, b = torch.randn(2, 9000) * 0.1, torch.randn(2, 9000) * 0.1
    a_len, b_len = torch.tensor([9000, 5000]), torch.tensor([7000, 9000])
    fa, la, fb, lb = pre.forward_pair(a, a_len, b, b_len)
    assert torch.equal(fa, pre(a, a_len)[0]) and torch.equal(fb, pre(b, b_len)[0])
    assert torch.equal(la, torch.tensor([56, 31])) and torch.equal(lb, torch.tensor([43, 56]))


def test_pair_call_with_different_widths_equals_separate_calls():
    pre = preprocessor()
    a, b = torch.randn(2, 9000) * 0.1, torch.randn(3, 12000) * 0.1
    a_len, b_len = torch.tensor([9000, 5000]), torch.tensor([12000, 8000, 3000])
    fa, la, fb, lb = pre.forward_pair(a, a_len, b, b_len)
    ea, ela = pre(a, a_len)
    eb, elb = pre(b, b_len)
    assert fa.shape == ea.shape and fb.shape == eb.shape
    assert torch.equal(fa, ea) and torch.equal(fb, eb)
    assert torch.equal(la, ela) and torch.equal(lb, elb)


def test_pair_call_draws_dither_batch_by_batch_like_two_calls():
    # NeMo dithers clean and noisy audio in two calls; 3 x 9001 samples is not a multiple of 16,
    # where one randn over both batches would draw other numbers (and leave the RNG elsewhere)
    pre = preprocessor(dither=1e-2).train()
    a, b = torch.randn(3, 9001) * 0.1, torch.randn(3, 9001) * 0.1
    a_len, b_len = torch.tensor([9001, 5000, 7000]), torch.tensor([7000, 9001, 3000])
    paired = torch.Generator().manual_seed(3)
    fa, _, fb, _ = pre.forward_pair(a, a_len, b, b_len, paired)
    separate = torch.Generator().manual_seed(3)
    ea, _ = pre(a, a_len, separate)
    eb, _ = pre(b, b_len, separate)
    assert torch.equal(fa, ea) and torch.equal(fb, eb)
    assert torch.equal(paired.get_state(), separate.get_state())


def test_n_fft_shorter_than_the_window_is_refused():
    with pytest.raises(
        ValueError, match=r"preprocessor.n_fft: shorter than the window \(expected at least 400 samples"
    ):
        preprocessor(n_fft=256)


@pytest.mark.parametrize("seconds, samples", [("window_size", "n_window_size"), ("window_stride", "n_window_stride")])
def test_a_window_in_neither_seconds_nor_samples_is_refused_by_name(seconds, samples):
    with pytest.raises(ValueError, match=rf"preprocessor\.{seconds}: required when {samples} is not set"):
        preprocessor(**{seconds: None})


def test_nemos_sample_count_spelling_gives_the_same_features():
    """NeMo takes n_window_size/n_window_stride only with window_size/window_stride null."""
    audio = torch.randn(2, 16000, generator=torch.Generator().manual_seed(5))
    lengths = torch.tensor([16000, 11000])
    seconds = preprocessor()
    samples = preprocessor(window_size=None, n_window_size=400, window_stride=None, n_window_stride=160)
    with torch.no_grad():
        assert torch.equal(seconds.featurizer(audio, lengths)[0], samples.featurizer(audio, lengths)[0])


def test_a_window_given_neither_in_seconds_nor_in_samples_is_a_config_error():
    from nestkit.config import config_from_dict
    from nestkit.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"preprocessor": {"window_size": None, "window_stride": None}}})
    assert "model.preprocessor.window_size: required when n_window_size is not set" in str(err.value)
    assert "model.preprocessor.window_stride: required when n_window_stride is not set" in str(err.value)


def test_dither_only_in_training_and_only_from_the_given_generator():
    pre = preprocessor(dither=1e-3)
    audio, lengths = torch.randn(1, 8000) * 0.1, torch.tensor([8000])
    eval_a, _ = pre(audio, lengths)
    eval_b, _ = pre(audio, lengths, torch.Generator().manual_seed(1))
    assert torch.equal(eval_a, eval_b)  # eval: no dither at all
    pre.train()
    with pytest.raises(ValueError, match="generator"):
        pre(audio, lengths)
    torch.manual_seed(0)
    a, _ = pre(audio, lengths, torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # the global RNG plays no part
    b, _ = pre(audio, lengths, torch.Generator().manual_seed(5))
    c, _ = pre(audio, lengths, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, eval_a)


def test_input_is_not_modified_in_place():
    pre = preprocessor(dither=1e-3).train()
    audio = torch.randn(1, 8000) * 0.1
    before = audio.clone()
    pre(audio, torch.tensor([8000]), torch.Generator().manual_seed(0))
    assert torch.equal(audio, before)


def test_features_need_no_gradient():
    pre = preprocessor()
    audio = torch.randn(1, 4000, requires_grad=True)
    feats, _ = pre(audio, torch.tensor([4000]))
    assert not feats.requires_grad


def test_mel_options_other_than_golden():
    fb = slaney_mel_filterbank(16000, 400, 64, f_min=20.0, f_max=7600.0)
    assert fb.shape == (64, 201)
    assert fb[:, : int(20 / 40)].sum() == 0  # nothing below f_min
    with pytest.raises(ValueError, match="norm"):
        slaney_mel_filterbank(16000, 512, 80, norm="htk")


def test_golden_length_of_one_sample_frame():
    pre = preprocessor()
    feats, frames = pre(t(np.zeros((1, 400), np.float32)), torch.tensor([0]))
    assert frames.tolist() == [0] and torch.all(feats == 0)
