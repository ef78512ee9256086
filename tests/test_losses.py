"""Task losses against hand-computed values: the class weight scales a one-bag loss, survival NLL cases."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from slidesnake.train.losses import class_weights, discrete_survival_nll, task_loss


def test_class_weight_scales_a_one_bag_loss_without_renormalising():
    logits = torch.tensor([[1.0, -0.5]])
    target = torch.tensor([1])
    weight = torch.tensor([0.2, 5.0])
    ce = math.log(math.exp(1.0) + math.exp(-0.5)) + 0.5  # -log softmax(logits)[1] = 1.70141
    assert abs(float(task_loss("classification", logits, target)) - ce) < 1e-6
    assert abs(float(task_loss("classification", logits, target, weight)) - 5.0 * ce) < 1e-5
    # torch's weighted mean divides by the summed weight: with one bag the weight cancels (the defect)
    assert abs(float(F.cross_entropy(logits, target, weight=weight)) - ce) < 1e-6


def test_weighted_batch_is_the_mean_of_weighted_bag_losses():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    target = torch.tensor([0, 1, 1])
    weight = torch.tensor([0.625, 2.5])  # class_weights of targets [0, 0, 0, 0, 1]
    assert torch.allclose(class_weights(np.array([0, 0, 0, 0, 1]), 2), weight)
    per_bag = F.cross_entropy(logits, target, reduction="none")
    expected = (per_bag * torch.tensor([0.625, 2.5, 2.5])).mean()
    assert torch.isclose(task_loss("classification", logits, target, weight), expected)
    assert not torch.isclose(expected, per_bag.mean())


def test_survival_nll_censored_and_event_cases_hand_computed():
    logits = torch.tensor([[0.0, 1.0, -1.0]])  # hazards 0.5, 0.731, 0.269
    h1 = 1 / (1 + math.exp(-1.0))
    censored = discrete_survival_nll(logits, torch.tensor([1]), torch.tensor([0]))
    assert abs(float(censored) - (-math.log(0.5 * (1 - h1)))) < 1e-6  # alive through bin 1: -log S(1)
    event = discrete_survival_nll(logits, torch.tensor([1]), torch.tensor([1]))
    assert abs(float(event) - (-math.log(0.5) - math.log(h1))) < 1e-6  # survived bin 0, died in bin 1
