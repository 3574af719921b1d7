"""The memory plan's prediction, term by term: what decides gradient checkpointing on a user's card."""
import torch

from training.memory_plan import optimizer_state_bytes, predicted_peak

GIB = 2 ** 30


def test_the_prediction_adds_resident_weights_adam_moments_and_activations_per_sample():
    # resident 5, optimizer state 2, activations of one sample 11 - 5 = 6: batch 4 peaks at 5 + 2 + 4 x 6
    assert predicted_peak(5 * GIB, 11 * GIB, batch=4, optimizer_state=2 * GIB) == 31 * GIB
    assert predicted_peak(5 * GIB, 11 * GIB, batch=1) == 11 * GIB
    assert predicted_peak(5 * GIB, 4 * GIB, batch=8) == 5 * GIB  # a measurement below resident adds nothing


def test_adamw_state_is_two_fp32_moments_per_trainable_value():
    params = [torch.zeros(1000, dtype=torch.bfloat16), torch.zeros(3, 7)]
    assert optimizer_state_bytes(params) == 2 * 4 * (1000 + 21)
