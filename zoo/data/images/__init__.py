"""Image datasets (MNIST, CIFAR, folders) and their transforms."""
