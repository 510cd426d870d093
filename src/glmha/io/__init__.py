"""Reading and writing files: images, atomic writes and output folders (no models here)."""
