"""Record each block's output tokens, with every block cut from the ones before it, around an
attention recorder: what LeGrad needs.

LeGrad wants, for every chosen block l, g_l = d s_l / d A_l, where s_l is a score read from block
l's output tokens and A_l is block l's attention. A_l also reaches the scores of later blocks
(through blocks l+1, ...), so one backward of sum_l s_l would mix them in. Here every block's
input is replaced by a detached copy that requires grad (a fresh leaf, same values): the graph
of block l then starts at its own input, and the only path from A_l to sum_m s_m is block l's
tail to s_l. A single backward of sum_l s_l thus gives each A_l exactly d s_l / d A_l, for one
forward plus one backward over the blocks' tails, with no `create_graph` and no per-block
backward. (Gradients of anything before a block, the input's included, are not available from
this recording.)

The scores are computed in a forward hook on each chosen block (`score`: tokens -> (B, classes)),
so they are on the graph the forward builds, also when the caller runs under no_grad.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from .around import AroundAttention, cut_inputs, tensor_of
from .session import RecordingSession


class BlockScoreRecorder(AroundAttention):
    """Context manager around an attention recorder (`attention`, a RecordingSession with
    `.attentions` and `.run`):

        with BlockScoreRecorder(adapter.recorder(gradients=True), blocks, chosen, score) as rec:
            logits = rec.forward(x)
            grads = rec.score_gradients(targets)   # per chosen block: d s_l / d A_l

    blocks: every block of the model, in forward order (all are cut from their predecessors);
    chosen: the indices of the blocks whose scores are taken; score(tokens) -> (B, classes).
    rec.scores: one (B, classes) tensor per chosen block; rec.attentions: the attention
    recorder's per-block attentions. The model is handed back as it came.
    """

    input_requires_grad = False  # every block's input is a leaf: nothing before the blocks is needed

    def __init__(self, attention: RecordingSession, blocks: Sequence[nn.Module], chosen: Sequence[int],
                 score: Callable[[torch.Tensor], torch.Tensor]):
        if not attention.gradients:
            raise ValueError("BlockScoreRecorder needs an attention recorder made with gradients=True")
        super().__init__(attention, gradients=True)
        self.blocks = list(blocks)
        self.chosen = list(chosen)
        self.score = score
        self._scores: dict[int, torch.Tensor] = {}
        self._calls = [0] * len(self.blocks)

    def install_own(self) -> None:
        # the block hooks first, so that a recorder snapshotting hooks (Hugging Face's) sees them
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(partial(self._cut, index), with_kwargs=True))
        for index in self.chosen:
            self._handles.append(self.blocks[index].register_forward_hook(partial(self._score, index)))

    def _cut(self, index, module, args, kwargs):
        self._calls[index] += 1
        return cut_inputs(module, args, kwargs)

    def _score(self, index, module, args, output) -> None:
        self._scores[index] = self.score(tensor_of(output))

    def reset(self) -> None:
        super().reset()
        self._scores, self._calls = {}, [0] * len(self.blocks)

    def check_recorded(self) -> None:
        super().check_recorded()
        if any(calls != 1 for calls in self._calls):
            raise RuntimeError(f"the blocks of {type(self.model).__name__} ran {self._calls} times in one "
                               "forward pass; LeGrad needs every block to run once")
        if len(self.attention.attentions) != len(self.blocks):
            raise RuntimeError(f"{type(self.model).__name__} recorded {len(self.attention.attentions)} attentions "
                               f"for {len(self.blocks)} blocks; LeGrad needs one per block")

    @property
    def scores(self) -> list[torch.Tensor]:
        return [self._scores[i] for i in self.chosen]

    def score_gradients(self, targets) -> list[torch.Tensor]:
        """d s_l / d A_l for every chosen block l, s_l the sum over the batch of each sample's
        target score read from block l (samples do not interact)."""
        with torch.inference_mode(False), torch.enable_grad():  # the sum joins the graph, also under no_grad
            total = torch.stack(self.scores).sum(dim=0)   # sum_l s_l: one backward serves every block
            return self.gradients_wrt(total, targets, [self.attentions[i] for i in self.chosen])

    def pool_gradients(self, targets) -> list[torch.Tensor]:
        """d s_l / d P_l for every chosen block l, P_l the attention (B, H, latents, N) of the model's
        attention pool when the score reads block l's tokens through it (LeGrad on SigLIP-style
        models). The attention recorder keeps every call of the pool in order: the scores call it
        block by block during the forward, the model's own call comes last."""
        pools = list(getattr(self.attention, "pool_attentions", None) or ())
        if len(pools) != len(self.chosen) + 1:
            raise RuntimeError(f"the attention pool of {type(self.model).__name__} ran {len(pools)} times for "
                               f"{len(self.chosen)} block scores and the model's own read-out")
        with torch.inference_mode(False), torch.enable_grad():
            total = torch.stack(self.scores).sum(dim=0)
            return self.gradients_wrt(total, targets, pools[:len(self.chosen)])
