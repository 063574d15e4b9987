"""Grad (Simonyan et al. 2013): the plain input gradient of the target logit (signed, all
channels). Its predicted targets come from the same forward pass as the gradient (no extra
forward)."""

from __future__ import annotations

import torch

from .base import SaliencyMethod, input_gradients, register


@register("grad", short="Grad")
class Gradient(SaliencyMethod):
    """Simonyan et al. (2013): the gradient of the target logit w.r.t. the input."""

    def attribute(self, images, targets=None, sample_ids=None):
        return self.attribute_with_predictions(images, targets, sample_ids)[0]

    def attribute_with_predictions(self, images, targets=None, sample_ids=None):
        """One forward+backward per pass gives the gradient *and* the prediction."""
        maps = torch.empty_like(images)
        predictions = torch.empty(images.shape[0], dtype=torch.long, device=images.device)
        for start in range(0, images.shape[0], self.pass_size):
            stop = start + self.pass_size
            batch_targets = None if targets is None else targets[start:stop]
            maps[start:stop], logits = input_gradients(
                self.model, images[start:stop], batch_targets
            )
            predictions[start:stop] = logits.argmax(1)
        return maps, (predictions if targets is None else targets), predictions
