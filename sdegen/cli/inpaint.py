"""``sdegen inpaint`` and ``sdegen colorize``: fill in hidden pixels of, or colour, images of a run's data set
with the run's score model (:func:`sdegen.inpaint`, :func:`sdegen.colorize`; Song et al. 2021, App. I).

Both take ``--n`` images of the run's data set (``--split``, a seeded choice), draw one completion per
image, and write a grid (``--grid``) of three rows: the input (hidden pixels mid-grey, or the grey
images), the samples, and the originals; ``--out`` also saves the arrays (``.npz``). Sample ``j`` draws
its noise from the generator of ``(--seed, j)``.

Masks (``--mask``, 1 = observed): ``left``, ``right``, ``top``, ``bottom`` hide that half of each image,
``center`` the central square of half the side, ``random:P`` each pixel with probability ``P`` (drawn per
image), and ``FILE.png`` hides the pixels that are black (< 128 in grey) in the picture, resized to the
images' size (nearest neighbour).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import UsageError, non_negative_int, pick_device, positive_int

REGIONS = ("left", "right", "top", "bottom", "center")


def parse_mask(spec: str, n: int, size: tuple[int, int], *, seed: int = 0):
    """The observation mask of ``--mask spec`` for ``n`` images of ``size = (H, W)``: a bool tensor
    ``[n or 1, 1, H, W]``, True where a pixel is observed. Raises UsageError for a bad spec."""
    import numpy as np
    import torch

    h, w = size
    observed = torch.ones(1, 1, h, w, dtype=torch.bool)
    if spec in REGIONS:
        rows, cols = {"left": (slice(None), slice(0, w // 2)), "right": (slice(None), slice(w // 2, None)),
                      "top": (slice(0, h // 2), slice(None)), "bottom": (slice(h // 2, None), slice(None)),
                      "center": (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))}[spec]
        observed[..., rows, cols] = False
        return observed
    if spec.startswith("random:"):
        try:
            p = float(spec.split(":", 1)[1])
        except ValueError:
            p = -1.0
        if not 0 < p < 1:
            raise UsageError(f"--mask random:P needs a probability 0 < P < 1 of hiding a pixel, got {spec!r}")
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, h, w, generator=g) >= p
    if spec.lower().endswith(".png"):
        if not Path(spec).is_file():
            raise UsageError(f"--mask: no file {spec}")
        from PIL import Image
        try:
            with Image.open(spec) as im:
                grey = im.convert("L").resize((w, h), Image.NEAREST)
        except OSError as e:
            raise UsageError(f"--mask: cannot read {spec} as an image ({e})")
        observed = torch.from_numpy(np.array(grey, dtype=np.int32)).reshape(1, 1, h, w) >= 128
        if observed.all() or not observed.any():
            raise UsageError(f"--mask {spec} {'hides no pixel' if observed.all() else 'hides every pixel'}: "
                             "black (< 128) pixels are filled in, white ones kept")
        return observed
    raise UsageError(f"unknown --mask {spec!r}; accepted: {', '.join(REGIONS)}, random:P (0 < P < 1), or a "
                     "FILE.png (black pixels are filled in)")


class Command:
    """One of the two commands (``task``: ``inpaint`` or ``colorize``): ``HELP``, ``add_arguments``, ``run``."""

    def __init__(self, task: str):
        self.task = task
        self.HELP = ("fill in hidden pixels (--mask) of images of a run's data set with its score model"
                     if task == "inpaint" else
                     "colour grey versions of images of a run's (RGB) data set with its score model")

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from ..conditional import METHODS

        parser.add_argument("source", help="a run folder (its newest good checkpoint) or a ckpt_<step>.pt file")
        if self.task == "inpaint":
            parser.add_argument("--mask", default="right",
                                help=f"{'|'.join(REGIONS)}|random:P|FILE.png: the pixels to fill in")
        parser.add_argument("--n", type=positive_int, default=16, help="number of images")
        parser.add_argument("--split", default="test", choices=("train", "test"), help="data split of the images")
        parser.add_argument("--method", default="replace", choices=METHODS,
                            help="replace (Song et al. 2021, App. I.2), repaint (Lugmayr et al. 2022), smc "
                                 "(twisted diffusion sampler, Wu et al. 2023)")
        parser.add_argument("--resample", type=positive_int, default=None, help="repaint: passes U (default 5)")
        parser.add_argument("--jump", type=positive_int, default=None, help="repaint: steps per jump J (default 10)")
        parser.add_argument("--particles", type=positive_int, default=None, help="smc: particles K (default 16)")
        parser.add_argument("--sampler", default=None,
                            help="replace: any sampler taking a step hook (default: the run's); repaint: pc "
                                 "(default) or a solver (heun, ddim, ..., adaptive_sde); smc runs the pc chain")
        parser.add_argument("--steps", type=positive_int, default=None,
                            help="sampler steps (default: the run's sampler's; repaint / smc: sde.N)")
        parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                            help="a sampler option, e.g. corrector=none or snr=0.1 (repeatable)")
        parser.add_argument("--seed", type=non_negative_int, default=0, help="the images' choice and the noise")
        parser.add_argument("--grid", default=f"{self.task}.png", metavar="PNG",
                            help="grid: input, samples, originals (one row each)")
        parser.add_argument("--out", default=None, metavar="NPZ", help="also save the arrays to this .npz")
        parser.add_argument("--raw", action="store_true", help="use the raw weights of a run, not its EMA")
        parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")

    def run(self, args: argparse.Namespace) -> int:
        import numpy as np
        import torch

        from .. import checkpoint
        from ..conditional import colorize, inpaint
        from ..noise import per_sample_generators
        from ..train import load_run
        from ..train.sample_job import save_picture

        if not args.grid.lower().endswith(".png"):
            raise UsageError(f"--grid must be a .png file, got {args.grid!r}")
        if args.out is not None and not args.out.endswith(".npz"):
            raise UsageError(f"--out must be a .npz file, got {args.out!r}")
        device = pick_device(args.device)
        try:
            model = load_run(args.source, use_ema=not args.raw, device=device)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e))
        if model.is_classifier or not model.is_image:
            raise UsageError(f"{self.task} needs a score model of images; {args.source} is "
                             f"{'a classifier' if model.is_classifier else 'a model of points'}")
        channels = model.shape[0]
        if self.task == "colorize" and channels != 3:
            raise UsageError(f"colorize needs an RGB run; {args.source} models images with {channels} channel(s)")
        originals = self._images(model, args).to(device)
        hidden = 0.0 if model.centered else 0.5             # mid-grey in the model's data range
        gens = per_sample_generators(args.seed, range(args.n))
        method_options = {k: getattr(args, k) for k in ("resample", "jump", "particles") if getattr(args, k)}
        sampler, options = self._sampler(model, args)
        try:
            with torch.no_grad():
                if self.task == "inpaint":
                    mask = parse_mask(args.mask, args.n, tuple(model.shape[1:]), seed=args.seed).to(device)
                    mask = mask.expand(args.n, channels, *model.shape[1:])
                    samples = inpaint(model.sde, model.score_fn(), originals, mask, method=args.method,
                                      sampler=sampler, generator=gens, **method_options, **options)
                    shown = torch.where(mask, originals, torch.full_like(originals, hidden))
                else:
                    gray = originals.mean(1, keepdim=True)
                    samples = colorize(model.sde, model.score_fn(), gray, channels=channels, method=args.method,
                                       sampler=sampler, generator=gens, **method_options, **options)
                    shown, mask = gray.expand_as(originals), None
        except ValueError as e:
            raise UsageError(str(e).splitlines()[0])
        save_picture(model, torch.cat([shown, samples, originals]).cpu(), args.grid, nrow=args.n)
        print(f"{self.task}: {args.n} images of {model.config.data.name} ({args.split}), method {args.method}, "
              f"sampler {sampler}; grid (input, samples, originals) -> {args.grid}")
        if args.out is not None:
            arrays = {"samples": samples, "originals": originals, "input": shown}
            if mask is not None:
                arrays["mask"] = mask
            arrays = {k: model.to_signed(v.float().cpu()).numpy() if k != "mask" else v.cpu().numpy()
                      for k, v in arrays.items()}
            checkpoint.atomic_write(Path(args.out), lambda f: np.savez(f, **arrays))
            print(f"arrays (samples, originals, input{', mask' if mask is not None else ''}; "
                  f"images in [-1, 1]) -> {args.out}")
        return 0

    @staticmethod
    def _images(model, args: argparse.Namespace):
        """``args.n`` images of the run's data set (a seeded choice from ``args.split``), in the model's range."""
        import torch

        from ..data import DataError, get_dataset

        cfg = model.config
        try:
            data = get_dataset(cfg.data.name, cfg.data.root, split=args.split, image_size=model.shape[-1],
                               centered=model.centered)
        except (DataError, ValueError, FileNotFoundError) as e:
            raise UsageError(f"the run's data set {cfg.data.name}: {str(e).splitlines()[0]}")
        if len(data) < args.n:
            raise UsageError(f"--n {args.n}: the {args.split} split of {cfg.data.name} has {len(data)} images")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[: args.n]
        return torch.stack([data[int(i)] for i in order]).float()

    @staticmethod
    def _sampler(model, args: argparse.Namespace) -> tuple[str, dict]:
        """``(sampler, options)``: replace takes the run's sampler (or ``--sampler``), so does repaint given a
        ``--sampler`` other than pc; otherwise repaint and smc take the pc chain with the run's predictor,
        corrector (smc: none) and snr; then ``--steps``, ``--option``."""
        from omegaconf import OmegaConf

        from ..sampling import SAMPLERS
        from ..train import SamplerOptions
        from .common import choice

        bad = [o for o in args.option if "=" not in o or o.startswith("=")]
        if bad:
            raise UsageError(f"--option takes KEY=VALUE, got {bad[0]!r}")
        extra = OmegaConf.to_container(OmegaConf.from_dotlist(args.option))
        extra = {k: (None if v == "none" else v) for k, v in extra.items()}
        run_default = SamplerOptions.from_config(model.config.sampling)
        if args.method == "replace" or (args.method == "repaint" and args.sampler not in (None, "pc")):
            sampler = choice(args.sampler or run_default.sampler, list(SAMPLERS), "sampler")
            base = dict(run_default.options) if sampler == run_default.sampler else {}
        else:
            if args.sampler not in (None, "pc"):
                raise UsageError(f"--method smc runs the pc sampler's chain; --sampler {args.sampler} "
                                 "goes with --method replace or repaint")
            sampler = "pc"
            s = model.config.sampling
            base = {"predictor": None if s.predictor == "none" else s.predictor, "snr": s.snr, "eps": s.eps,
                    "corrector": None if s.corrector == "none" or args.method == "smc" else s.corrector}
            if s.solver is None and s.steps is not None:   # a run's pc steps (a solver's are too few for pc)
                base["steps"] = s.steps
        if args.steps is not None:
            base["steps"] = args.steps
        return sampler, {**base, **extra}


_INPAINT = Command("inpaint")
HELP, add_arguments, run = _INPAINT.HELP, _INPAINT.add_arguments, _INPAINT.run
colorize = Command("colorize")
