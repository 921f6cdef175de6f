"""A reproducible DVC study of posterior collapse in VAEs on binarized MNIST.

One module per DVC stage (download, binarize, train, evaluate, report), each a pure function
plus a thin typer command in `stages.cli`; beside them the building blocks they share.
Nothing runs at import time.
"""

__version__ = "0.1.0"
