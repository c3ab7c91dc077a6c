"""elth: find, stretch, squeeze and train lottery tickets (E-LTH, Chen et al. 2021)."""

__version__ = "0.1.0"
