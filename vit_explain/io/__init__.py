"""The I/O room: models, images, preprocessing, overlays and output files."""
