"""Grad-CAM (Selvaraju et al., 2017) on channels-last feature maps.

Feature maps here are (B, gh, gw, C): a transformer's patch tokens laid out on their grid, or a
Swin stage's NHWC output. Pure functions; no models or hooks.
"""
import torch


def _check(activations: torch.Tensor, gradients: torch.Tensor) -> None:
    if activations.ndim != 4 or activations.shape != gradients.shape:
        raise ValueError(
            "Grad-CAM needs activations and gradients of the same shape (B, gh, gw, C); got "
            f"{tuple(activations.shape)} and {tuple(gradients.shape)}"
        )


def gradcam_weights(gradients: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw, C) -> (B, C): each channel's gradient averaged over the spatial positions."""
    if gradients.ndim != 4:
        raise ValueError(f"expected gradients of shape (B, gh, gw, C), got {tuple(gradients.shape)}")
    return gradients.mean(dim=(1, 2))


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) map relu(sum_c w_c * A_c) with w = gradcam_weights(gradients); not rescaled."""
    _check(activations, gradients)
    weights = gradcam_weights(gradients)
    cam = (activations * weights[:, None, None, :]).sum(dim=-1)
    return cam.clamp(min=0)
