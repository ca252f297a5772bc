"""Options shared by `vit-explain` and `vit-explain evaluate` (no torch import here: --help stays fast)."""
import click

METHOD_NAMES = ["rollout", "grad-rollout", "chefer", "raw-attention", "flow", "grad-cam"]


def model_options(command):
    """--model, --hub, --checkpoint, --device, --use_cuda."""
    for option in reversed([
        click.option("--model", default="deit_tiny_patch16_224",
                     help="timm model name (pretrained weights), local-dir:FOLDER for a saved timm model, or "
                          "hf:NAME_OR_FOLDER for a Hugging Face transformers ViT classifier (the hf extra)."),
        click.option("--hub", default=None, metavar="REPO",
                     help="Load --model as an entry point of this torch hub repo "
                          "(e.g. facebookresearch/deit:main) or local hub folder."),
        click.option("--checkpoint", default=None, type=click.Path(dir_okay=False),
                     help="Weights (.pth / .safetensors) for the architecture named by --model."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto"),
        click.option("--use_cuda", "--use-cuda", "use_cuda", is_flag=True, help="Same as --device cuda."),
    ]):
        command = option(command)
    return command
