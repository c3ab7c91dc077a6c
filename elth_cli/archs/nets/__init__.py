"""The torch side of the registry: nn.Module classes and helpers that need torch.

Nothing in ``elth_cli.archs`` imports this package at module level: a family's ``build``
and the model-building functions of ``elth_cli.archs`` import it when a model is built, so
resolving names, reading layouts and counting parameters never pay torch's import time.
"""
