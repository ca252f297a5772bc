"""Make the offline CLIP demo: a tiny Hugging Face CLIPModel that matches captions such as
"red circle" or "blue square" to synthetic two-object images, saved with its processor in
examples/demo-clip, and twelve two-object samples with one mask per object (examples/clip-images,
examples/clip-masks) on which a prompt's map can be checked against the prompted object.

The images come from the localisation benchmark's generator (benchmarks/localisation_data.py,
object set A): two objects of different colours (red, green, blue, yellow), each a disk, square or
triangle, on grey clutter. Each object has a caption, "<colour> <shape>" ("circle" for the disk).
The model learns which captions are in an image, so a caption can only be recognised from its
object, and a prompt's explanation has to point at that object and not at the other one.

    python examples/make_demo_clip.py [--out examples]      # ~5 minutes of one CPU core
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from localisation_data import OBJECT_SETS, two_named_objects  # noqa: E402  (the shared generator)

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors  # noqa: E402
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,  # noqa: E402
                          PreTrainedTokenizerFast)

OBJECT_SET = "A"
COLOURS = list(OBJECT_SETS[OBJECT_SET]["colours"])            # red, green, blue, yellow
SHAPES = list(OBJECT_SETS[OBJECT_SET]["shapes"])              # disk, square, triangle
SHAPE_WORDS = {"disk": "circle", "square": "square", "triangle": "triangle"}
CONCEPTS = [f"{c} {SHAPE_WORDS[s]}" for c in COLOURS for s in SHAPES]  # the 12 captions, index c * 3 + s
TEMPLATES = ["{}", "a {}"]  # "red circle" and "a red circle" must both work as prompts
RENDER = 128   # images are drawn at 128 px and shrunk by the processor, as a user's image would be
SIDE = 64      # the model's input
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>"]
# eos_token_id must not be 2: CLIPTextTransformer treats eos_token_id == 2 as the legacy
# "eos is the largest id" rule; any other id pools the first eos of each sequence, which is ours.
PAD, UNK, BOS, EOS = range(4)
MEAN = STD = (0.5, 0.5, 0.5)


# -----------------------------------------------------------------------------------------------
# data

def concept(colour_label: int, shape: str) -> int:
    return colour_label * len(SHAPES) + SHAPES.index(shape)


def render(rng: np.random.Generator):
    """(image RGB uint8 RENDER x RENDER, [(concept index, mask)] for its two objects)."""
    image, objects = two_named_objects(rng, RENDER, OBJECT_SET)
    return image, [(concept(label, shape), mask) for label, shape, mask in objects]


def training_set(seed: int, count: int, processor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel values through the shipped processor (so training sees what users' images become)
    and a (count, 12) 0/1 matrix: which captions are true of each image."""
    rng = np.random.default_rng(seed)
    images, present = [], torch.zeros(count, len(CONCEPTS))
    for i in range(count):
        image, objects = render(rng)
        images.append(Image.fromarray(image))
        for index, _ in objects:
            present[i, index] = 1
    pixels = torch.cat([processor(images=images[i:i + 500], return_tensors="pt")["pixel_values"]
                        for i in range(0, count, 500)])
    return pixels, present


# -----------------------------------------------------------------------------------------------
# processor: CLIP's image processor at 64 px and a word-level tokenizer of the 8 caption words

def make_processor() -> CLIPProcessor:
    words = ["a"] + COLOURS + [SHAPE_WORDS[s] for s in SHAPES]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(SPECIAL + words)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # <bos> caption <eos>: the text tower is causal, so the eos token is the one that has seen
    # every word, and it is where CLIP pools the sentence
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", BOS), ("<eos>", EOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=16)
    images = CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                                image_mean=list(MEAN), image_std=list(STD))
    return CLIPProcessor(image_processor=images, tokenizer=fast)


def make_model(vocab_size: int) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16,
                         pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, projection_dim=64),
        vision_config=dict(image_size=SIDE, patch_size=8, hidden_size=96, intermediate_size=384,
                           num_hidden_layers=4, num_attention_heads=4, projection_dim=64),
        projection_dim=64)
    return CLIPModel(config)


# -----------------------------------------------------------------------------------------------
# training

def multi_positive_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with several right answers: each image's softmax over the
    captions should share its mass equally between the captions of its two objects, and each
    caption's softmax over the images of the batch equally between the images that contain it.
    The image side teaches the model to name both objects; the caption side, to tell an image
    with a red circle from one with a red square or a blue circle."""
    image_to_text = -(present / present.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    shown = present.sum(0) > 0  # captions with at least one image in the batch
    targets = present[:, shown] / present[:, shown].sum(0, keepdim=True)
    text_to_image = -(targets * logits[:, shown].log_softmax(0)).sum(0).mean()
    return (image_to_text + text_to_image) / 2


def caption_batch(processor, generator: torch.Generator) -> dict:
    """The 12 captions, each in a random one of the templates."""
    picks = torch.randint(len(TEMPLATES), (len(CONCEPTS),), generator=generator).tolist()
    return processor.tokenizer([TEMPLATES[t].format(c) for t, c in zip(picks, CONCEPTS)],
                               padding=True, return_tensors="pt")


def logits(model: CLIPModel, pixels: torch.Tensor, text: dict) -> torch.Tensor:
    out = model(pixel_values=pixels, **text)
    return out.logits_per_image  # (images, captions) = logit_scale * cosine


def evaluate(model: CLIPModel, processor, pixels: torch.Tensor, present: torch.Tensor) -> dict:
    """Zero-shot retrieval over the 12 captions ("a <colour> <shape>"): the image's two best
    captions are its two objects (both right), and per object, its caption outranks every caption
    of an absent object."""
    model.eval()
    with torch.no_grad():
        text = processor.tokenizer([f"a {c}" for c in CONCEPTS], padding=True, return_tensors="pt")
        scores = torch.cat([logits(model, pixels[i:i + 500], text) for i in range(0, len(pixels), 500)])
    top2 = torch.zeros_like(present).scatter_(1, scores.topk(2, dim=1).indices, 1)
    both = (top2 == present).all(1).float().mean().item()
    best_absent = scores.masked_fill(present > 0, -1e9).amax(1, keepdim=True)
    per_object = ((scores > best_absent) & (present > 0)).sum().item() / present.sum().item()
    return {"both objects top 2": both, "object above every absent caption": per_object}


def train(processor, seed: int, count: int, steps: int, batch: int):
    pixels, present = training_set(seed, count, processor)
    split = count * 9 // 10  # the last tenth is held out
    torch.manual_seed(seed)
    model = make_model(len(processor.tokenizer))
    # weight decay on the matrices only (nanoGPT's rule): decaying the (log) logit scale would pull
    # the scale towards 1, a temperature of 1, and LayerNorm gains and biases need no regularising
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimiser = torch.optim.AdamW([{"params": matrices, "weight_decay": 0.05},
                                   {"params": others, "weight_decay": 0.0}], lr=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(1, steps + 1):
        model.train()
        rows = torch.randint(0, split, (batch,), generator=generator)
        x = pixels[rows]
        if step % 2:  # a mirrored scene has the same captions (the triangles point up either way)
            x = x.flip(-1)
        loss = multi_positive_loss(logits(model, x, caption_batch(processor, generator)), present[rows])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        with torch.no_grad():  # CLIP's cap on the temperature
            model.logit_scale.clamp_(0, np.log(100))
        if step % 100 == 0 or step == steps:
            scores = evaluate(model, processor, pixels[split:], present[split:])
            print(f"step {step} loss {loss.item():.3f} held-out "
                  + ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
                  + f" logit scale {model.logit_scale.exp().item():.1f} ({time.time() - start:.0f} s)")
    return model.eval(), scores


# -----------------------------------------------------------------------------------------------
# the shipped samples: 12 images, each concept in two of them, the first a red circle and a
# blue square (the README's command)

def sample_pairs() -> list[tuple[int, int]]:
    # concept i with concept i + 7: never the same colour (colours are blocks of 3), every concept
    # twice, and pair 0 is (red circle, blue square)
    return [(i, (i + 7) % len(CONCEPTS)) for i in range(len(CONCEPTS))]


def write_samples(out: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, masks = out / "clip-images", out / "clip-masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    index = {}
    for number, pair in enumerate(sample_pairs(), start=1):
        while True:  # draw until the generator gives this pair of objects (1 draw in ~54)
            image, objects = render(rng)
            if sorted(i for i, _ in objects) == sorted(pair):
                break
        objects.sort(key=lambda o: pair.index(o[0]))
        stem = f"{number:02d}_" + "_".join(CONCEPTS[i].replace(" ", "-") for i in pair)
        cv2.imwrite(str(images / f"{stem}.png"), image[:, :, ::-1])
        entries = []
        for k, (i, mask) in enumerate(objects):
            ys, xs = np.nonzero(mask)
            cv2.imwrite(str(masks / f"{stem}_{k}.png"), mask.astype(np.uint8) * 255)
            entries.append({"caption": CONCEPTS[i], "mask": f"{stem}_{k}.png",
                            "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]})
        index[f"{stem}.png"] = entries
    (masks / "objects.json").write_text(json.dumps(index, indent=1) + "\n")


def save(model: CLIPModel, processor: CLIPProcessor, folder: Path) -> None:
    model.save_pretrained(folder)  # safetensors: loading the shipped weights never unpickles anything
    processor.save_pretrained(folder)
    # the generic class name, which every transformers version with tokenizer.json support loads
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)  # the shipped weights were made with 1
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    processor = make_processor()
    model, scores = train(processor, args.seed, args.images, args.steps, args.batch)
    save(model, processor, args.out / "demo-clip")
    write_samples(args.out, args.seed + 1)
    print(f"done in {time.time() - start:.0f} s: held-out {scores}")


if __name__ == "__main__":
    main()
