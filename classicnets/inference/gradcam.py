"""Grad-CAM (R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, https://arxiv.org/abs/1610.02391): where in the image the evidence for a class lies.

For a layer's feature maps A^k (K x h x w) and the class score y^c (the logit, before the softmax, as in the paper):
alpha_k = the mean over positions of dy^c/dA^k (equation 1), map = ReLU(sum_k alpha_k A^k) (equation 2), upsampled
bilinearly to the input size (as the paper does to overlay it on the image) and divided by its maximum, so 1 marks
the strongest evidence in each image.
"""

from __future__ import annotations

import torch
from torch import nn

from classicnets.inference.layers import capture_outputs, gradcam_layer
from classicnets.models.base import unwrap_model


def grad_cam(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None, *, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps N x H x W in [0, 1] on the CPU, logits N x classes) for a normalised input batch `x` (N x C x H x W).

    `classes[i]` is the class explained for image i (default: the predicted one); `layer` a dotted module name
    (default: inference.layers.gradcam_layer). Runs in float32 with gradients, whatever the model's settings.
    """
    net = unwrap_model(model)
    name = layer or gradcam_layer(net)
    was_training = net.training
    net.eval()
    # The input asks for a gradient so that the maps are in the graph even when every weight is frozen.
    x = x.detach().float().requires_grad_(True)
    try:
        with torch.enable_grad(), capture_outputs(net, [name], keep_graph=True) as outputs:
            logits = net(x)
            if isinstance(logits, tuple):  # a model returning auxiliary outputs: the main one comes first
                logits = logits[0]
            logits = logits.float()
            target = logits.argmax(dim=1) if classes is None else classes.to(logits.device)
            score = logits.gather(1, target[:, None]).sum()  # images are independent: one backward for all
            maps = outputs[name]
            (grads,) = torch.autograd.grad(score, maps)
    finally:
        net.train(was_training)
    weights = grads.float().mean(dim=(2, 3), keepdim=True)  # alpha_k, equation 1
    cam = nn.functional.relu((weights * maps.detach().float()).sum(dim=1, keepdim=True))  # equation 2
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu(), logits.detach()
