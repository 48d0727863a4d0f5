"""The PyTorch MLP family: the network, its seeded training loop, and structured pruning.

Shared by the `train` stage (fit) and the `optimize` stage (prune + fine-tune), so both train the
same way. Inputs are the preprocessed float32 matrix `[n, d]` (one-hot + standardized columns).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

log = logging.getLogger(__name__)


class MLP(nn.Module):
    """`d -> hidden[0] -> ... -> 1` with ReLU; `forward` returns the probability `[n, 1]` float32."""

    def __init__(self, n_inputs: int, hidden: list[int]) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.hidden = list(hidden)
        layers: list[nn.Module] = []
        width = n_inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))

    def linears(self) -> list[nn.Linear]:
        return [m for m in self.net if isinstance(m, nn.Linear)]


@dataclass
class FitResult:
    """Per-epoch curves: train loss, validation loss and ROC AUC (log loss in nats)."""

    curves: list[dict] = field(default_factory=list)
    best_epoch: int = 0


def deterministic_torch(seed: int) -> None:
    """Make training repeatable on one machine: two runs give the same weights, bit for bit.

    Seeds torch and numpy, asks for deterministic kernels (an op without one raises instead of
    silently varying), and fixes torch to one intra-op thread (a parallel reduction sums in a
    thread-dependent order) and one inter-op thread. The mini-batch order comes from a seeded
    `torch.Generator` in `fit_mlp`. Across machines or library versions the bits may differ.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or inter-op work started in this process: it can be set once only
        pass


def fit_mlp(
    model: MLP,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> FitResult:
    """Train with Adam on BCE-with-logits; keep the weights of the epoch with the best validation loss.

    Args:
        x_train, x_valid: float32 `[n, d]`. y_train, y_valid: 0/1 `[n]`.

    Returns:
        The curves; `model` holds the best epoch's weights on return.
    """
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train.astype(np.float32)).reshape(-1, 1)
    xv = torch.from_numpy(x_valid)
    yv = torch.from_numpy(y_valid.astype(np.float32)).reshape(-1, 1)
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    result = FitResult()
    best = (float("inf"), None)
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model.logits(xv)
            vloss = float(loss_fn(logits, yv))
            vauc = float(roc_auc_score(y_valid, torch.sigmoid(logits).numpy().ravel()))
        result.curves.append({"epoch": epoch, "train_loss": total / len(xt), "valid_loss": vloss, "valid_roc_auc": vauc})
        log.info("mlp epoch %d: train_loss=%.4f valid_loss=%.4f valid_auc=%.4f", epoch, total / len(xt), vloss, vauc)
        if vloss < best[0]:
            best = (vloss, {k: v.clone() for k, v in model.state_dict().items()})
            result.best_epoch = epoch
    if best[1] is not None:
        model.load_state_dict(best[1])
    return result


def predict_mlp(model: MLP, x: np.ndarray) -> np.ndarray:
    """Probabilities `[n]` float32 for a preprocessed float32 matrix `[n, d]`."""
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().ravel()


def prune_mlp(model: MLP, keep: float) -> MLP:
    """Structured pruning: physically remove the hidden units with the smallest weight norms.

    For each hidden layer, a unit's importance is the L2 norm of its incoming weights times that of
    its outgoing weights (a magnitude criterion, as in Li et al. 2017, "Pruning Filters for
    Efficient ConvNets"); the top `keep` share survive. Rows of the layer and columns of the next
    layer are sliced, so the new network is smaller, not sparse.

    Returns:
        A new `MLP` with `hidden[i] * keep` units per layer (at least 1), weights copied over.
    """
    linears = model.linears()
    new_hidden = [max(1, round(h * keep)) for h in model.hidden]
    pruned = MLP(model.n_inputs, new_hidden)
    new_linears = pruned.linears()
    prev_idx = torch.arange(model.n_inputs)
    with torch.no_grad():
        for i, lin in enumerate(linears):
            w_in = lin.weight[:, prev_idx]
            if i < len(model.hidden):
                score = w_in.norm(dim=1) * linears[i + 1].weight.norm(dim=0)
                idx = torch.sort(torch.topk(score, new_hidden[i]).indices).values
            else:
                idx = torch.arange(lin.out_features)
            new_linears[i].weight.copy_(w_in[idx])
            new_linears[i].bias.copy_(lin.bias[idx])
            prev_idx = idx
    return pruned


def save_mlp(model: MLP, path) -> None:
    """Save weights and shape as tensors only (`torch.save` of a dict; loadable with weights_only)."""
    torch.save({"state_dict": model.state_dict(), "n_inputs": model.n_inputs, "hidden": model.hidden}, path)


def load_mlp(path) -> MLP:
    """Load what `save_mlp` wrote, without unpickling arbitrary objects."""
    blob = torch.load(path, weights_only=True)
    model = MLP(int(blob["n_inputs"]), [int(h) for h in blob["hidden"]])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model
