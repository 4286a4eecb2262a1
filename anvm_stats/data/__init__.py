"""Data sets: the embedded 8x8 digits (default for studies), an embedded text corpus for character-level language
models, and readers of CIFAR-10/100, MNIST and Fashion-MNIST from a local folder in their standard formats (nothing
is ever downloaded; torchvision is not needed)."""

from .base import Data, digits
from .readers import cifar10, cifar100, fashion_mnist, load, mnist, read_idx
from .chars import text

__all__ = ["Data", "digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "load", "read_idx", "text"]
