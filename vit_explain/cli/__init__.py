"""The vit-explain command line."""
