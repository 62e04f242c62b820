"""The network: 784 inputs (a flattened 28x28 image) -> 64 sigmoid units -> 10 logits.

    from model import Net
    logits = Net()(images)  # images: (N, 1, 28, 28) or (N, 784)
"""
from torch import nn

IN_FEATURES = 28 * 28  # one flattened MNIST image
HIDDEN = 64  # hidden units
CLASSES = 10  # digits 0-9


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, HIDDEN)
        self.activation = nn.Sigmoid()
        self.fc2 = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        # logits, not probabilities: CrossEntropyLoss applies log-softmax itself
        return self.fc2(self.activation(self.fc1(x.flatten(1))))


def architecture(model):
    """'784-64-10 sigmoid': layer sizes and activation, read off the model as it is built."""
    sizes = [model.fc1.in_features, model.fc1.out_features, model.fc2.out_features]
    return "-".join(map(str, sizes)) + " " + type(model.activation).__name__.lower()

