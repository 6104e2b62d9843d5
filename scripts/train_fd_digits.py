"""Train the FD-digits feature network and write sdegen/assets/fd_digits.safetensors.

Trains :class:`sdegen.metrics.fd_digits.DigitsCNN` to classify scikit-learn's 8x8 digits (the
fixed 1437-image train split; 360 are held out) with Adam, cross-entropy, dropout and random
one-pixel shifts (so that the features vary smoothly under small deformations, and blurred digits
land between real digits and noise). Deterministic: fixed
seed, one CPU thread, deterministic kernels; a few seconds on a CPU.

    python scripts/train_fd_digits.py [--out PATH] [--epochs 30] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sdegen.metrics.fd_digits import WEIGHTS_PATH, DigitsCNN, load_digits_split


def accuracy(net: DigitsCNN, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (net(x).argmax(dim=1) == y).float().mean().item()


def random_shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Shift each ``[1, 8, 8]`` image by up to one pixel along each axis (zero fill)."""
    padded = F.pad(x, (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2, len(x)), generator=g).tolist()
    return torch.stack([p[:, i:i + 8, j:j + 8] for p, i, j in zip(padded, dy, dx)])


def train(epochs: int, seed: int, batch_size: int = 64, lr: float = 2e-3) -> tuple[DigitsCNN, dict]:
    torch.manual_seed(seed)  # layer initialisation and dropout draw from the global generator
    g = torch.Generator().manual_seed(seed)
    x, y = load_digits_split("train")
    x_test, y_test = load_digits_split("test")
    net = DigitsCNN()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            idx = perm[start:start + batch_size]
            loss = F.cross_entropy(net(random_shift(x[idx], g)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    info = {"epochs": str(epochs), "seed": str(seed), "train_accuracy": f"{accuracy(net, x, y):.4f}",
            "test_accuracy": f"{accuracy(net, x_test, y_test):.4f}",
            "data": "sklearn.datasets.load_digits / 16, train split (seed 0, 360 held out)"}
    return net, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    net, info = train(args.epochs, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # one metadata entry: safetensors writes several in no fixed order, which would change the file's hash
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out),
              metadata={"training": json.dumps(info, sort_keys=True)})
    print(f"train accuracy {info['train_accuracy']}, held-out accuracy {info['test_accuracy']}, "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
