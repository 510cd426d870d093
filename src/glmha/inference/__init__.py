"""Running trained models on data: restore (padding, tiling, precision), files, the fast path, export, spectral reconstruction."""
from .restoration import restore, restore_files

__all__ = ["restore", "restore_files"]
