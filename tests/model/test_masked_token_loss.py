"""Masked-token loss: NeMo's MultiMLMLoss semantics, finite with no masked frame, odd frame counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nestkit.model.loss import loss_frame_mask, masked_token_loss


def random_inputs(batch=2, frames=32, steps=4, classes=10, books=2, features=3):
    torch.manual_seed(0)
    log_probs = F.log_softmax(torch.randn(batch, frames // steps, classes, books, requires_grad=True), dim=2)
    tokens = torch.randint(0, classes, (batch, frames // steps, books))
    return log_probs, tokens, torch.zeros(batch, features, frames)


def test_loss_is_the_mean_nll_over_masked_groups_averaged_over_books():
    log_probs, tokens, masks = random_inputs()
    masks[0, :, 4:12] = 1.0  # groups 1 and 2 of row 0
    masks[1, :, 17:20] = 1.0  # 3 of 4 frames of group 4: 0.75 is not above 0.8
    masks[1, :, 24:28] = 1.0  # group 6 of row 1
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    chosen = [(0, 1), (0, 2), (1, 6)]
    expected = torch.stack(
        [
            F.nll_loss(
                log_probs[[b for b, _ in chosen], [g for _, g in chosen], :, h],
                tokens[[b for b, _ in chosen], [g for _, g in chosen], h],
            )
            for h in range(2)
        ]
    ).mean()
    torch.testing.assert_close(result.loss, expected)
    assert int(result.num_masked_frames) == 3


def test_threshold_compares_the_mean_over_features_and_steps():
    masks = torch.zeros(1, 2, 8)
    masks[0, 0, 0:4] = 1.0  # one feature of two masked: mean 0.5
    masks[0, :, 4:8] = 1.0
    assert loss_frame_mask(masks, 4, 0.8).tolist() == [[False, True]]
    assert loss_frame_mask(masks, 4, 0.4).tolist() == [[True, True]]


def test_no_masked_frame_gives_a_finite_zero_loss_that_still_backpropagates():
    log_probs, tokens, masks = random_inputs()
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    assert result.loss.item() == 0.0 and int(result.num_masked_frames) == 0
    result.loss.backward()  # the graph is intact (DDP needs every step to backpropagate)


def test_frame_count_not_divisible_by_the_step_count():
    log_probs, tokens, _ = random_inputs(frames=32)
    masks = torch.zeros(2, 3, 30)  # 30 frames, steps of 4: padded to 32 with unmasked frames
    masks[:, :, 28:30] = 1.0  # last group half present: 2 of 4 frames -> not a loss frame
    masks[:, :, 0:4] = 1.0
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    assert int(result.num_masked_frames) == 2
    assert torch.isfinite(result.loss)


def test_more_groups_than_decoder_frames_scores_only_frames_with_a_target():
    log_probs, tokens, masks = random_inputs(frames=32)
    masks = torch.ones(2, 3, 40)  # 10 groups but only 8 decoder frames and 8 targets
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    assert int(result.num_masked_frames) == 16


def test_decoder_lengths_do_not_limit_the_frames_as_in_nemo():
    # NeMo's disjoint masking can cover padding past an utterance's end; its loss scores those groups
    log_probs, tokens, _ = random_inputs()
    masks = torch.ones(2, 3, 32)
    result = masked_token_loss(masks, log_probs, tokens, torch.tensor([8, 3]), 4, 0.8)
    assert int(result.num_masked_frames) == 16
    assert torch.equal(result.loss, masked_token_loss(masks, log_probs, tokens, None, 4, 0.8).loss)


def test_single_book_squeezed_layout():
    log_probs, tokens, masks = random_inputs(books=1)
    masks[:, :, :8] = 1.0
    full = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    squeezed = masked_token_loss(masks, log_probs[..., 0], tokens[..., 0], None, 4, 0.8)
    torch.testing.assert_close(full.loss, squeezed.loss)
    assert int(squeezed.num_masked_frames) == 4


def test_accuracy_counts_loss_frames_whose_most_likely_class_is_the_target():
    log_probs, tokens, masks = random_inputs(batch=2, frames=32, steps=4, classes=10, books=2)
    masks[0, :, 0:8] = 1.0  # groups 0 and 1 of row 0
    masks[1, :, 28:32] = 1.0  # group 7 of row 1
    with torch.no_grad():
        best = log_probs.argmax(dim=2)  # (B, T', H)
        tokens = best.clone()
        tokens[0, 1, 0] = (best[0, 1, 0] + 1) % 10  # a miss on a loss frame (book 0)
        tokens[1, 7, 1] = (best[1, 7, 1] + 1) % 10  # a miss on a loss frame (book 1)
        tokens[1, 0, :] = (best[1, 0, :] + 1) % 10  # misses on a frame the loss does not score
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    assert int(result.num_masked_frames) == 3 and result.num_books == 2
    assert int(result.num_targets) == 6 and int(result.num_correct) == 4
    assert result.accuracy.item() == pytest.approx(4 / 6)


def test_accuracy_is_zero_without_loss_frames():
    log_probs, tokens, masks = random_inputs()
    result = masked_token_loss(masks, log_probs, tokens, None, 4, 0.8)
    assert int(result.num_correct) == 0 and result.accuracy.item() == 0.0
