"""`python -m vit_explain ...` is the `vit-explain` command (what `torchrun -m vit_explain` starts)."""
from .cli.main import main

if __name__ == "__main__":
    main()
