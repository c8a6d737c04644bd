"""Training steps for the tests: importable by name (``custom_steps:...``), as replay needs."""

from __future__ import annotations

import torch


def label_smoothing_step(model, batch, optimizer, ctx):
    """A custom step: a label-smoothed NLL per sample, through the context's helpers."""
    inputs, labels, _ = batch
    with ctx.autocast():
        output = model(inputs)
        nll = torch.nn.functional.nll_loss(output, labels, reduction="none")
        losses = 0.9 * nll - 0.1 * output.mean(dim=1)
    ctx.backward(losses.mean())
    ctx.optimizer_step()
    return losses, output


def scalar_step(model, batch, optimizer, ctx):
    """A wrong step: it returns the batch's mean loss, not one loss per sample."""
    inputs, labels, _ = batch
    output = model(inputs)
    loss = torch.nn.functional.nll_loss(output, labels)
    ctx.backward(loss)
    ctx.optimizer_step()
    return loss, output


def plain_step(model, batch, optimizer, ctx):
    """What a hand-written loop's body does, as a step replay can run once per batch."""
    inputs, labels, _ = batch
    optimizer.zero_grad(set_to_none=True)
    output = model(inputs)
    losses = torch.nn.functional.nll_loss(output, labels, reduction="none")
    losses.mean().backward()
    optimizer.step()
    return losses, output
