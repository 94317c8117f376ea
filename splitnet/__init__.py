"""splitnet: model-parallel training of convolutional networks split across devices.

The idea is AlexNet's (Krizhevsky, Sutskever, Hinton, NeurIPS 2012): channel groups
and layers live on different devices, which talk only at a few connecting layers.
"""

__version__ = "0.1.0"
