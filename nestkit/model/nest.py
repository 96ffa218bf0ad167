"""The NEST model: NeMo's `EncDecDenoiseMaskedTokenPredModel` as a plain `nn.Module`.

Clean audio gives the targets (quantizer tokens); noisy audio, block-masked, goes through the
encoder; the decoder predicts the clean tokens of the masked frames. Module names and state_dict
keys are NeMo's, so weights move both ways (see `nestkit.model.checkpoint`).

Randomness (dither, masks, stochastic depth) comes only from the `generator` given to `forward`;
the trainer seeds it from (seed, the batch's plan position), so a step can be replayed exactly.
Dropout uses torch's global RNG like any torch model.

mask_position="post_conv" masks the subsampled (d_model) frames instead of the mel frames. NeMo
2.6.2 crashes there: its denoising forward feeds the (B, F, T) features to the subsampling module,
which expects (B, T, F) (the encoder transposes before calling it; that call does not), and the
subsampled width then does not match `pre_encode.out`. Here the targets come from the clean
features subsampled in the right layout. Kept from NeMo on purpose: the key layout
(`encoder.pre_encode.pre_encode.*`, `encoder.pre_encode.masking.*`, the same tensors again under
`pre_encoder.*`), block_size counted in mel frames (divided by the subsampling factor), and the
masked features detached, so the subsampling never trains (it also makes the targets, which
would drift if it did); nestkit marks it frozen as well.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn

from nestkit.config import ModelConfig
from nestkit.model.conformer import ConformerEncoder, build_subsampling
from nestkit.model.decoder import MultiSoftmaxDecoder
from nestkit.model.derived import filled, not_filled_error
from nestkit.model.loss import LossResult, masked_token_loss
from nestkit.model.masking import RandomBlockMasking
from nestkit.model.precision import full_precision
from nestkit.model.preprocessor import MelPreprocessor
from nestkit.model.quantizer import RandomProjectionQuantizer


class NestOutput(NamedTuple):
    log_probs: torch.Tensor  # (B, T', C, H) log-softmax, or (B, T', C) with squeeze_single
    encoded_len: torch.Tensor  # (B,) int64 valid encoder frames
    masks: torch.Tensor  # (B, D, T) 1.0 on masked frames (mel frames, or encoder frames for post_conv)
    tokens: torch.Tensor  # (B, T', H) int64 targets, or (B, T') with squeeze_single


class PostConvPreEncode(nn.Module):
    """`encoder.pre_encode` when masking after subsampling: holds the subsampling and, for NeMo's
    key layout, the masking module; its forward only subsamples (the model applies the mask)."""

    def __init__(self, subsampling: nn.Module, masking: RandomBlockMasking):
        super().__init__()
        self.pre_encode = subsampling
        self.masking = masking

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pre_encode(x, lengths)


class NestModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _require_derived_fields(cfg)
        if cfg.quantizer.time_ahead:
            # NeMo's model also passes (B, D, T) with time_ahead set: its quantizer then reads D as
            # time and fails on the projection's shape (or silently mixes frames when T == D)
            raise ValueError(
                "model.quantizer.time_ahead: not supported by the NEST model (expected false: the model gives the "
                "quantizer (B, D, T) features; got true)"
            )
        self.post_conv = cfg.mask_position == "post_conv"
        block_size = cfg.masking.block_size
        if self.post_conv:
            block_size //= cfg.encoder.subsampling_factor  # block_size is in mel frames, as in NeMo
            if block_size < 1:
                raise ValueError(
                    f"model.masking.block_size: too small for post_conv masking (expected at least "
                    f"{cfg.encoder.subsampling_factor} mel frames, one encoder frame; got {cfg.masking.block_size})"
                )
        masking = RandomBlockMasking(cfg.masking, filled(cfg.masking.feat_in, "masking.feat_in"), block_size)
        pre_encoder = None
        if self.post_conv:
            pre_encoder = PostConvPreEncode(build_subsampling(cfg.encoder), masking)
            # NeMo detaches its output in every masked step, so it never trains; frozen here too,
            # so that DDP does not wait for gradients that never come
            pre_encoder.pre_encode.requires_grad_(False)
        # assignment order is NeMo's state_dict key order
        self.preprocessor = MelPreprocessor(cfg.preprocessor)
        self.encoder = ConformerEncoder(cfg.encoder, pre_encode=pre_encoder)
        self.quantizer = RandomProjectionQuantizer(cfg.quantizer)
        self.mask_processor = masking
        self.decoder = MultiSoftmaxDecoder(cfg.decoder)
        if pre_encoder is not None:
            self.pre_encoder = pre_encoder
        self.combine_time_steps = filled(cfg.loss.combine_time_steps, "loss.combine_time_steps")
        self.mask_threshold = cfg.loss.mask_threshold

    def forward(
        self,
        audio: torch.Tensor,
        audio_len: torch.Tensor,
        noisy_audio: torch.Tensor,
        noisy_audio_len: torch.Tensor,
        apply_mask: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> NestOutput:
        """(B, T) clean and noisy audio with (B,) sample counts -> NestOutput.

        `generator` is required when masking or training (dither, stochastic depth draw from it).
        """
        if generator is None and (apply_mask or self.training):
            raise ValueError(
                "NestModel.forward: no generator (expected a torch.Generator when apply_mask or training, got None). "
                "Pass generator=nestkit.core.rng.torch_generator(seed, 'model', epoch, micro_batch_index)"
            )
        clean, clean_len, noisy, noisy_len = self.preprocessor.forward_pair(
            audio, audio_len, noisy_audio, noisy_audio_len, generator
        )
        if self.post_conv:
            return self._forward_post_conv(clean, clean_len, noisy, noisy_len, apply_mask, generator)
        tokens = self.quantizer(clean)
        if apply_mask:
            encoder_input, masks = self.mask_processor(noisy, noisy_len, generator)
        else:
            encoder_input, masks = noisy, torch.zeros_like(noisy)
        encoded, encoded_len = self.encoder(encoder_input, noisy_len, generator)
        return NestOutput(self.decoder(encoded), encoded_len, masks, tokens)

    def _forward_post_conv(
        self,
        clean: torch.Tensor,
        clean_len: torch.Tensor,
        noisy: torch.Tensor,
        noisy_len: torch.Tensor,
        apply_mask: bool,
        generator: Optional[torch.Generator],
    ) -> NestOutput:
        subsampling = self.pre_encoder.pre_encode  # the encoder's pre_encode.pre_encode
        with torch.no_grad(), full_precision(clean.device):  # targets do not follow autocast
            clean_frames, _ = subsampling(clean.transpose(1, 2), clean_len)
        tokens = self.quantizer(clean_frames.transpose(1, 2))
        frames, frames_len = subsampling(noisy.transpose(1, 2), noisy_len)
        if apply_mask:
            masked, masks = self.mask_processor(frames.transpose(1, 2), frames_len, generator)
            frames = masked.transpose(1, 2).detach()
        else:
            masks = torch.zeros_like(frames.transpose(1, 2))
        encoded, encoded_len = self.encoder.forward_subsampled(frames, frames_len, generator)
        return NestOutput(self.decoder(encoded), encoded_len, masks, tokens)

    def loss(self, output: NestOutput) -> LossResult:
        """(loss, num_masked_frames) of a forward's output; loss is 0, not NaN, when nothing is masked."""
        return masked_token_loss(
            output.masks,
            output.log_probs,
            output.tokens,
            output.encoded_len,
            self.combine_time_steps,
            self.mask_threshold,
        )


def _require_derived_fields(cfg: ModelConfig) -> None:
    """A ModelConfig made by hand lacks the fields config_from_dict/load_config derive: all of them named at once."""
    derived = {
        "preprocessor.sample_rate": cfg.preprocessor.sample_rate,
        "encoder.feat_in": cfg.encoder.feat_in,
        "masking.feat_in": cfg.masking.feat_in,
        "quantizer.feat_in": cfg.quantizer.feat_in,
        "quantizer.code_dim": cfg.quantizer.code_dim,
        "quantizer.num_books": cfg.quantizer.num_books,
        "quantizer.num_classes": cfg.quantizer.num_classes,
        "quantizer.combine_time_steps": cfg.quantizer.combine_time_steps,
        "decoder.feat_in": cfg.decoder.feat_in,
        "decoder.num_classes": cfg.decoder.num_classes,
        "decoder.num_decoders": cfg.decoder.num_decoders,
        "loss.combine_time_steps": cfg.loss.combine_time_steps,
    }
    missing = [name for name, value in derived.items() if value is None]
    if missing:
        raise not_filled_error(missing)
