"""Why this answer: which pixels pushed the network to its digit, and which toward the runner-up.

    from machinery.evidence import evidence
    answer, runner_up, pixels = evidence(model, x)  # x: one (1, 28, 28) image; pixels: (28, 28)

For each pixel, gradient times input of the answer's logit minus the runner-up's: how much that
pixel's ink moved the gap between the two, to first order. Positive (red in the pictures) pushed
toward the answer, negative (blue) toward the runner-up; paper (0) moves nothing. It is the plain,
well-known attribution for a network this small: one forward and one backward pass of the model
itself, nothing trained or sampled.
"""
import torch


def evidence(model, x):
    """(answer, runner-up, the 28x28 evidence map) for one image x, as described above."""
    model.eval()
    x = x.detach().reshape(1, 1, *x.shape[-2:]).requires_grad_(True)  # 28x28, or what data.py makes of it
    with torch.enable_grad():  # also when called where gradients are off (the draw server's answers)
        logits = model(x)[0]
        answer, runner_up = logits.topk(2).indices.tolist()
        # autograd.grad, not backward(): only x's gradient, nothing accumulates in the weights' .grad
        gradient, = torch.autograd.grad(logits[answer] - logits[runner_up], x)
    return answer, runner_up, (gradient * x).detach()[0, 0]
