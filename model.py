"""The network: 784 inputs (a flattened 28x28 image) -> 64 sigmoid units -> 10 logits.

    from model import Net
    logits = Net()(images)  # images: (N, 1, 28, 28) or (N, 784)

Edit HIDDEN or ACTIVATION, or the class itself (BatchNorm, Dropout, a CNN), to try another network:
each checkpoint records the network it holds as print(model) shows it, and each run keeps this file
in its lesson/ folder, so runs trained before an edit stay usable.
"""
from torch import nn

IN_FEATURES = 28 * 28  # one flattened MNIST image
HIDDEN = 64  # hidden units
ACTIVATION = nn.Sigmoid  # the hidden units' activation: nn.ReLU, nn.Tanh, ... work too
CLASSES = 10  # digits 0-9


class Net(nn.Module):
    def __init__(self, hidden=HIDDEN, activation=ACTIVATION):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, hidden)
        self.activation = activation()
        self.fc2 = nn.Linear(hidden, CLASSES)

    def forward(self, x):
        # logits, not probabilities: CrossEntropyLoss applies log-softmax itself
        return self.fc2(self.activation(self.fc1(x.flatten(1))))

