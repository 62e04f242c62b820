"""evidence.py against a hand computation on a tiny network (as the model's reference test does)."""
import torch

from machinery.evidence import evidence
from model import Net


def test_evidence_is_gradient_times_input_of_the_answer_against_the_runner_up():
    torch.manual_seed(0)
    net = Net(hidden=3)
    x = torch.rand(1, 28, 28)
    W1, b1, W2, b2 = net.fc1.weight, net.fc1.bias, net.fc2.weight, net.fc2.bias
    with torch.no_grad():  # by hand: logits = W2 sigmoid(W1 x + b1) + b2
        h = torch.sigmoid(W1 @ x.flatten() + b1)
        logits = W2 @ h + b2
        order = logits.argsort(descending=True)
        a, r = order[0].item(), order[1].item()
        # d(logit_a - logit_r)/dx = W1^T (sigmoid'(.) * (W2[a] - W2[r])), sigmoid' = h (1 - h)
        gradient = W1.t() @ (h * (1 - h) * (W2[a] - W2[r]))
        expected = (gradient * x.flatten()).view(28, 28)
    answer, runner_up, pixels = evidence(net, x)
    assert (answer, runner_up) == (a, r) and pixels.shape == (28, 28)
    assert torch.allclose(pixels, expected, atol=1e-7, rtol=1e-5)
    x[0, :5] = 0  # paper moves nothing
    assert evidence(net, x)[2][:5].count_nonzero() == 0
    assert all(p.grad is None for p in net.parameters())  # the weights' grads are left alone


def test_blank_pixels_move_nothing_and_the_signs_follow_the_weights():
    net = Net(hidden=1, activation=torch.nn.Identity)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.fc1.weight[0, 0] = 1.0  # pixel (0, 0) feeds the one unit...
        net.fc1.weight[0, 1] = -1.0  # ...and pixel (0, 1) against it
        net.fc2.weight[3, 0] = 2.0  # the unit votes for 3
        net.fc2.bias[5] = 0.5  # 5 is the runner-up
    x = torch.zeros(1, 28, 28)
    x[0, 0, 0], x[0, 0, 1] = 1.0, 0.25
    answer, runner_up, pixels = evidence(net, x)
    assert (answer, runner_up) == (3, 5)
    assert pixels[0, 0].item() == 2.0 and pixels[0, 1].item() == -0.5 and pixels.count_nonzero() == 2
