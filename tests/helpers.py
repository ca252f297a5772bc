"""Plain helper functions shared by the test modules (fixtures live in conftest.py)."""
import contextlib
import copy

import pytest
import torch

LABELS = ["cat", "dog", "fox"]  # the class names of conftest's tiny_model_dir


def peaky(model, factor=4):
    """Random-init attention is nearly uniform: scaling every attention module's qkv weight makes
    the maps peaky, as training does. In place, under no_grad; returns the model."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "attn_drop") and hasattr(module, "qkv"):
                module.qkv.weight.mul_(factor)
    return model


def model_state(model):
    """Everything an explainer must hand back unchanged."""
    return {
        "training": [m.training for m in model.modules()],
        "fused": [getattr(m, "fused_attn", None) for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for m in model.modules()],
    }


def assert_state_equal(before, after):
    for key in before:
        if key == "grads":
            assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(before[key], after[key]))
        else:
            assert before[key] == after[key], key


def literal_rollout(attention, head_fusion, ratio, grad=None):
    """One sample, full N x N products, exactly as written in design.md."""
    n = attention.shape[-1]
    result = torch.eye(n, dtype=torch.float64)
    for layer, a in enumerate(attention):
        a = a.double() if grad is None else (a * grad[layer]).double()
        fused = {"mean": a.mean(0), "max": a.max(0)[0], "min": a.min(0)[0]}[head_fusion]
        if grad is not None:
            fused = fused.clamp(min=0)
        flat = fused.flatten().clone()
        order = flat.argsort()[: int(n * n * ratio)]
        order = order[order != 0]
        flat[order] = 0
        m = (flat.view(n, n) + torch.eye(n, dtype=torch.float64)) / 2
        m = m / m.sum(-1, keepdim=True)
        result = m @ result
    return result


def plain_gradcam(model, layer_name, x, categories, num_prefix, grid):
    """Straightforward Grad-CAM written independently of the package: retain_grad + backward on a copy."""
    model = copy.deepcopy(model).eval().requires_grad_(False)
    store = {}

    def hook(module, inputs, output):
        output.retain_grad()
        store["a"] = output

    # only the target layer's parameters require grad: its output is in the graph, nothing before it
    dict(model.named_modules())[layer_name].requires_grad_(True).register_forward_hook(hook)
    logits = model(x)
    logits = getattr(logits, "logits", logits)  # a Hugging Face model's output object
    logits[torch.arange(len(x)), torch.as_tensor(categories)].sum().backward()
    act, grad = store["a"].detach(), store["a"].grad
    if act.ndim == 3:  # tokens: drop the prefix, lay out on the grid
        act, grad = (t[:, num_prefix:].reshape(len(x), *grid, -1) for t in (act, grad))
    cam = torch.relu((act * grad.mean(dim=(1, 2), keepdim=True)).sum(-1))
    return (cam / cam.amax(dim=(1, 2), keepdim=True)).numpy()


def run(capsys, *args):
    """The vit-explain command in-process: (exit code, stdout, stderr)."""
    from vit_explain.cli.main import main  # here, so that modules not testing the command do not load it
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def error_lines(err):
    """stderr without the progress bar."""
    return [line for line in err.replace("\r", "\n").splitlines() if line and "explaining" not in line]


def tiny(model_dir):
    return ["--model", f"local-dir:{model_dir}", "--quiet"]


@contextlib.contextmanager
def counting_runs(model, monkeypatch):
    """Inside the block, count the model's forward calls ("forward") and torch.autograd.grad's
    calls (their keyword arguments, in "grads")."""
    calls = {"forward": 0, "grads": []}
    handle = model.register_forward_pre_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))
    real_grad = torch.autograd.grad

    def counting_grad(*args, **kwargs):
        calls["grads"].append(kwargs)
        return real_grad(*args, **kwargs)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch.autograd, "grad", counting_grad)
            yield calls
    finally:
        handle.remove()
