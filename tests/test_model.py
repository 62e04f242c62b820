"""The network against plain tensor math: shapes, parameter count, forward and gradients."""
import torch
import torch.nn.functional as F

from model import Net


def test_shapes_and_parameter_count():
    model = Net()
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert model(torch.rand(3, 784)).shape == (3, 10)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {"fc1.weight": (64, 784), "fc1.bias": (64,), "fc2.weight": (10, 64), "fc2.bias": (10,)}
    assert sum(p.numel() for p in model.parameters()) == 50_890


def test_forward_and_backward_match_hand_written_math():
    torch.manual_seed(0)
    model = Net().double()
    x = torch.rand(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    w1, b1, w2, b2 = model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias

    flat = x.reshape(8, 784)
    hidden = 1 / (1 + torch.exp(-(flat @ w1.T + b1)))
    logits = hidden @ w2.T + b2
    assert torch.allclose(model(x), logits, rtol=0, atol=1e-12)

    # cross-entropy = mean(logsumexp(logits) - logit of the true class); its gradients by hand
    loss = (torch.logsumexp(logits, 1) - logits[torch.arange(8), y]).mean()
    dlogits = (torch.softmax(logits, 1) - F.one_hot(y, 10)) / 8
    dhidden = dlogits @ w2
    dpre = dhidden * hidden * (1 - hidden)
    expected = {"fc2.weight": dlogits.T @ hidden, "fc2.bias": dlogits.sum(0),
                "fc1.weight": dpre.T @ flat, "fc1.bias": dpre.sum(0)}

    torch_loss = F.cross_entropy(model(x), y)
    assert torch.allclose(torch_loss, loss, rtol=0, atol=1e-12)
    torch_loss.backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name].detach(), rtol=0, atol=1e-12), name
