"""Models in other formats: diffusers folders in (:func:`load_diffusers`), sdegen runs out
(:func:`export_safetensors`, :func:`load_export`), and a diffusers scheduler's timesteps as sdegen times
(:func:`diffusers_times`, for the ``times`` option of the fixed-step samplers).

A diffusers model is a ``UNet2DModel`` (built here from its ``config.json`` with diffusers' own class; its
weights read with safetensors, or with ``torch.load(weights_only=True)`` for ``.bin``; no code of the folder
runs) and a scheduler config:

- DDPM-family schedulers (``DDPMScheduler``, ``DDIMScheduler``, ``PNDMScheduler``, ...) with linear betas
  ``beta_k = beta_start + k / (N - 1) (beta_end - beta_start)``: the discrete chain of ``VPSDE(beta_min =
  N beta_start, beta_max = N beta_end, N)`` (Song et al. 2021, App. B). The network's timestep at time
  ``t`` is the fractional index ``k(t)`` whose noise level is the SDE's: ``-log abar`` of the chain,
  ``L_k = -sum_{j<=k} log(1 - beta_j)`` (Ho et al. 2020, eq. 4), interpolated linearly and solved for
  ``int_0^t beta = L``. At ``t_k`` (``info["t_of_timestep"](k)``) the SDE's marginal is the chain's
  ``N(sqrt(abar_k) x0, (1 - abar_k) I)`` exactly and the network sees timestep ``k``, as in diffusers.
  The output becomes a score with the SDE's ``a(t), s(t)``: ``epsilon``: ``-eps / s``; ``v_prediction``:
  ``eps = a v + s x`` (Salimans & Ho 2022, eq. 10 / diffusers' DDIM); ``sample``: ``eps = (x - a x0) / s``.
- ``ScoreSdeVeScheduler``: ``VESDE(sigma_min, sigma_max, N = num_train_timesteps)``; the network takes
  ``sigma(t)`` and returns the score itself (its Fourier ``UNet2DModel`` divides by sigma).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .checkpoint import atomic_write, safe_load
from .sde import SDE, VESDE, VPSDE, ScoreFn, bcast

INSTALL_HINT = "diffusers is not installed; install the extra: pip install 'sdegen[diffusers]'"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
VE_SCHEDULER = "ScoreSdeVeScheduler"
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Scheduler names accepted for a bare UNet2DModel folder (diffusers class names also work).
SCHEDULER_NAMES = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler",
                   "score_sde_ve": VE_SCHEDULER, "ve": VE_SCHEDULER}
# Attention keys of diffusers' old checkpoints and their current names (diffusers renames them on load).
_OLD_ATTENTION_KEYS = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
EXPORT_FORMAT = "sdegen-score-export"
EXPORT_CONFIG = "sdegen_config.json"
EXPORT_WEIGHTS = "model.safetensors"


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return diffusers


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --- finding the parts of a folder --------------------------------------------------------------------


def _hub_snapshot(name: str) -> Path:
    """A local copy of the Hub repository ``name`` (only configs and weights are fetched)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as e:  # network down, no such repository, gated, ...
        raise FileNotFoundError(f"{name} is not a local folder, and fetching it from the Hugging Face Hub "
                                f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def _locate(path: Path, subfolder: Optional[str]) -> tuple[Path, Optional[Path]]:
    """``(unet folder, scheduler_config.json or None)`` of a pipeline folder, a ``unet/`` + ``scheduler/``
    pair, or a bare model folder."""
    if subfolder is not None:
        unet = path / subfolder
        sched = path / "scheduler" / "scheduler_config.json"
        return unet, sched if sched.is_file() else None
    index = path / "model_index.json"
    if index.is_file():
        entries = _read_json(index)
        unet_entry, sched_entry = entries.get("unet"), entries.get("scheduler")
        if unet_entry is None:
            parts = ", ".join(k for k in entries if not k.startswith("_"))
            raise ValueError(f"{index}: the pipeline has no 'unet' (has {parts})")
        if list(unet_entry) != ["diffusers", "UNet2DModel"]:
            raise ValueError(f"{index}: the unet is {unet_entry}; only diffusers' UNet2DModel is supported")
        if sched_entry is not None and (len(sched_entry) != 2 or sched_entry[0] != "diffusers"):
            raise ValueError(f"{index}: the scheduler is {sched_entry}; only diffusers' own schedulers are supported")
    if (path / "unet" / "config.json").is_file():
        sched = path / "scheduler" / "scheduler_config.json"
        return path / "unet", sched if sched.is_file() else None
    if (path / "config.json").is_file():
        sched = path / "scheduler_config.json"
        return path, sched if sched.is_file() else None
    raise FileNotFoundError(f"{path} is not a diffusers folder: expected model_index.json with unet/ and "
                            "scheduler/, a unet/ + scheduler/ pair, or a UNet2DModel folder (config.json and "
                            f"{WEIGHT_FILES[0]})")


def _scheduler_config(found: Optional[Path], scheduler) -> dict:
    """The scheduler config: ``scheduler`` (a name, a diffusers class name, a JSON file or a dict) if given,
    else the folder's."""
    if scheduler is None:
        if found is None:
            raise ValueError("this folder has no scheduler config; pass scheduler= one of "
                             f"{sorted(SCHEDULER_NAMES)}, a diffusers scheduler class name or a scheduler_config.json")
        return _read_json(found)
    if isinstance(scheduler, Mapping):
        return dict(scheduler)
    text = str(scheduler)
    if text.endswith(".json"):
        if not Path(text).is_file():
            raise FileNotFoundError(f"scheduler config not found: {text}")
        return _read_json(Path(text))
    cls_name = SCHEDULER_NAMES.get(text.lower(), text)
    cls = getattr(_diffusers(), cls_name, None) if cls_name.endswith("Scheduler") else None
    if cls is None:
        raise ValueError(f"unknown scheduler {text!r}; accepted: {', '.join(sorted(SCHEDULER_NAMES))}, a diffusers "
                         "scheduler class name, or a scheduler_config.json")
    return {"_class_name": cls_name, **dict(cls().config)}


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``folder`` (safetensors preferred; ``.bin`` with ``weights_only`` loading)."""
    st, binary = (folder / name for name in WEIGHT_FILES)
    if st.is_file():
        from safetensors.torch import load_file
        try:
            return load_file(str(st))
        except Exception as e:
            raise ValueError(f"{st}: not a readable safetensors file ({e})") from None
    if binary.is_file():
        state = safe_load(binary, what="weights file")
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{binary}: expected a state dict of tensors")
        return dict(state)
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    raise FileNotFoundError(f"no weights in {folder}: expected {' or '.join(WEIGHT_FILES)} "
                            f"(found {', '.join(present) or 'nothing'})")


def _few(names: Sequence[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _load_unet(folder: Path, device, dtype: torch.dtype):
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else None
    if config is None:
        raise FileNotFoundError(f"{folder}: no config.json of a UNet2DModel")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"{folder / 'config.json'}: a {config['_class_name']}; only UNet2DModel is supported")
    UNet2DModel = _diffusers().UNet2DModel
    try:
        net = UNet2DModel.from_config(config)
    except Exception as e:
        raise ValueError(f"{folder / 'config.json'}: diffusers cannot build a UNet2DModel from it ({e})") from None
    state = _read_weights(folder)
    expected = net.state_dict()
    for key in [k for k in state if k not in expected]:  # old attention names, renamed as diffusers does
        new = key
        for old, cur in _OLD_ATTENTION_KEYS.items():
            new = new.replace(old, cur)
        if new in expected:
            state[new] = state.pop(key)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {list(state[k].shape)} (network: {list(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = [f"{what}: {_few(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected),
                                                            ("shape mismatch", wrong)) if keys]
        raise ValueError(f"{folder}: the weights do not match config.json; " + "; ".join(parts))
    net.load_state_dict(state, strict=True)
    net.to(device)
    if dtype != net.dtype:
        net.to(dtype)
    return net.eval().requires_grad_(False), config


# --- the discrete DDPM chain as a VP SDE ----------------------------------------------------------------


def _linear_betas(cfg: Mapping[str, Any], where: str) -> tuple[float, float, int]:
    """``(beta_start, beta_end, N)`` of a DDPM-family scheduler config, or ValueError if not linear."""
    n = int(cfg.get("num_train_timesteps", 1000))
    if cfg.get("rescale_betas_zero_snr"):
        raise ValueError(f"{where}: rescale_betas_zero_snr=True makes abar_N = 0, which no VP SDE has")
    trained = cfg.get("trained_betas")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float64)
        line = torch.linspace(float(betas[0]), float(betas[-1]), len(betas), dtype=torch.float64)
        if len(betas) != n or not torch.allclose(betas, line, rtol=1e-5, atol=1e-9):
            raise ValueError(f"{where}: trained_betas are not linear; a VP SDE needs linear betas")
        return float(betas[0]), float(betas[-1]), n
    schedule = cfg.get("beta_schedule", "linear")
    if schedule != "linear":
        raise ValueError(f"{where}: beta_schedule={schedule!r}; only 'linear' betas are the discretisation of a "
                         "VP SDE (Song et al. 2021, App. B), so this model cannot be loaded as one")
    return float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02)), n


@dataclass(frozen=True)
class DDPMTime:
    """The map between a ``VPSDE``'s time ``t`` and the fractional timestep of its discrete DDPM chain
    with equal noise level (see the module doc); ``L`` is ``-log abar_k`` for ``k = 0..N-1`` (float64)."""

    sde: VPSDE
    L: torch.Tensor

    @classmethod
    def of(cls, sde: VPSDE) -> "DDPMTime":
        k = torch.arange(sde.N, dtype=torch.float64)
        betas = (sde.beta_min + k / max(sde.N - 1, 1) * (sde.beta_max - sde.beta_min)) / sde.N
        return cls(sde, -torch.cumsum(torch.log1p(-betas), 0))   # L_k = -log prod (1 - beta_j)

    def timestep(self, t: torch.Tensor) -> torch.Tensor:
        """Fractional timestep ``k(t)`` in ``[0, N-1]`` (float64, on ``t``'s device)."""
        L = self.sde.integral_beta(t.to(torch.float64))
        tab = self.L.to(L.device)
        i = torch.searchsorted(tab, L).clamp(1, len(tab) - 1)
        lo, hi = tab[i - 1], tab[i]
        return ((i - 1) + (L - lo) / (hi - lo)).clamp(0, len(tab) - 1)

    def t_of_timestep(self, k) -> torch.Tensor:
        """The time ``t`` (float64) whose noise level is timestep ``k``'s: ``int_0^t beta = L_k``."""
        k = torch.as_tensor(k, dtype=torch.float64)
        i = k.floor().long().clamp(0, len(self.L) - 2)
        L = self.L[i] + (k - i) * (self.L[i + 1] - self.L[i])
        b0, db = self.sde.beta_min, self.sde.beta_max - self.sde.beta_min
        # root of b0 t + db t^2 / 2 = L, in the form without cancellation
        return 2 * L / (b0 + torch.sqrt(b0 * b0 + 2 * db * L))


def _vp_score(net, sde: VPSDE, prediction: str, channels: int) -> tuple[ScoreFn, DDPMTime]:
    clock = DDPMTime.of(sde)

    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = clock.timestep(t).to(x.device)
        out = net(x.to(net.dtype), k.to(torch.float32)).sample[:, :channels].to(x.dtype)
        a, s = sde.marginal_coeffs(t.to(device=x.device, dtype=torch.float64))
        a, s = bcast(a, x), bcast(s, x)
        if prediction == "epsilon":
            eps = out
        elif prediction == "v_prediction":
            eps = a * out + s * x            # Salimans & Ho 2022: x = a x0 + s eps, v = a eps - s x0
        else:
            eps = (x - a * out) / s          # x0 prediction
        return -eps / s                      # score = -eps / s(t) (Song et al. 2021, App. C)

    return score_fn, clock


def _ve_score(net, sde: VESDE) -> ScoreFn:
    def score_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = sde.sigma(t.to(device=x.device, dtype=torch.float64)).to(torch.float32)
        return net(x.to(net.dtype), sigma).sample.to(x.dtype)   # the Fourier UNet2DModel returns output / sigma

    return score_fn


def load_diffusers(path: str | os.PathLike, *, subfolder: Optional[str] = None, device="cpu",
                   dtype: torch.dtype = torch.float32, scheduler=None) -> tuple[SDE, ScoreFn, dict]:
    """A diffusers ``UNet2DModel`` with its scheduler as ``(sde, score_fn, info)`` (see the module doc).

    Args:
        path: a local folder: a pipeline (``model_index.json``), a ``unet/`` + ``scheduler/`` pair, or a bare
            ``UNet2DModel`` folder (then ``scheduler`` is needed unless it holds ``scheduler_config.json``). A
            Hub name (``org/model``) that is not a local folder is fetched when the network allows.
        subfolder: the model's folder inside ``path`` (its scheduler: ``path/scheduler`` or ``scheduler``).
        device, dtype: where and in what precision the network runs.
        scheduler: overrides the folder's scheduler: ``"ddpm"``, ``"ddim"``, ``"pndm"``, ``"score_sde_ve"``, a
            diffusers scheduler class name (its default config), a ``scheduler_config.json`` or a dict.

    Returns: ``sde`` (``VPSDE`` or ``VESDE``), ``score_fn(x [B, C, H, W], t [B]) -> score`` (times in any float
    dtype; coefficients in float64), and ``info``: ``net``, ``shape`` ``(C, H, W)``, ``centered`` (data in
    [-1, 1], else [0, 1]), ``scheduler`` (class name), ``scheduler_config``, ``prediction_type``, ``source``,
    ``sampling`` (the scheduler's own sampler settings) and, for VP models, ``t_of_timestep(k)`` /
    ``timestep_of_t(t)``.

    Raises ImportError without diffusers, FileNotFoundError for a missing folder or file, ValueError for
    a folder this function cannot load (with the reason)."""
    root = Path(path)
    if not root.exists():
        if re.fullmatch(r"[\w.-]+/[\w.-]+", str(path)) and not str(path).startswith((".", "/")):
            root = _hub_snapshot(str(path))
        else:
            raise FileNotFoundError(f"no diffusers folder at {path}")
    if not root.is_dir():
        raise ValueError(f"{path} is a file; a diffusers model is a folder (model_index.json, unet/, scheduler/)")
    unet_dir, sched_file = _locate(root, subfolder)
    sched = _scheduler_config(sched_file, scheduler)
    name = str(sched.get("_class_name", "a scheduler"))
    net, config = _load_unet(unet_dir, device, dtype)
    channels = int(config.get("in_channels", 3))
    size = config.get("sample_size", 32)
    size = (size, size) if isinstance(size, int) else tuple(size)
    info: dict[str, Any] = {"net": net, "shape": (channels, *size), "scheduler": name, "scheduler_config": sched,
                            "source": str(root)}
    where = f"{sched_file or 'scheduler'} ({name})"
    if name == VE_SCHEDULER:
        if config.get("time_embedding_type") != "fourier":
            raise ValueError(f"{unet_dir / 'config.json'}: a {VE_SCHEDULER} model needs the Fourier time embedding "
                             "(time_embedding_type='fourier'), which divides the output by sigma")
        sde = VESDE(sigma_min=float(sched.get("sigma_min", 0.01)), sigma_max=float(sched.get("sigma_max", 1348.0)),
                    N=int(sched.get("num_train_timesteps", 2000)))
        info.update(centered=False, prediction_type="score", score_fn_of="sigma(t)",
                    sampling={"sampler": "pc", "predictor": "reverse_diffusion", "corrector": "langevin",
                              "snr": float(sched.get("snr", 0.15)),
                              "n_corrector_steps": int(sched.get("correct_steps", 1)),
                              "eps": float(sched.get("sampling_eps", 1e-5)), "order": "corrector_first",
                              "snr_norm": "batch"})
        return sde, _ve_score(net, sde), info
    if "num_train_timesteps" not in sched:
        raise ValueError(f"{where}: not a DDPM-family scheduler (no num_train_timesteps) nor {VE_SCHEDULER}")
    beta_start, beta_end, n = _linear_betas(sched, where)
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"{where}: prediction_type={prediction!r}; accepted: {', '.join(PREDICTION_TYPES)}")
    out_channels = int(config.get("out_channels", channels))
    if out_channels not in (channels, 2 * channels):
        raise ValueError(f"{unet_dir / 'config.json'}: out_channels={out_channels} for in_channels={channels}; "
                         "expected equal (or twice, for a learned variance)")
    sde = VPSDE(beta_min=beta_start * n, beta_max=beta_end * n, N=n)
    score_fn, clock = _vp_score(net, sde, prediction, channels)
    info.update(centered=True, prediction_type=prediction, t_of_timestep=clock.t_of_timestep,
                timestep_of_t=clock.timestep, score_fn_of="the timestep k(t) of equal noise level",
                sampling={"sampler": "pc", "predictor": "ancestral", "corrector": None, "steps": n})
    return sde, score_fn, info


def load_diffusers_model(path: str | os.PathLike, **kwargs):
    """:func:`load_diffusers` as a :class:`sdegen.train.ScoreModel` (for the sampling jobs and the CLI)."""
    from .train.runs import ScoreModel

    sde, score_fn, info = load_diffusers(path, **kwargs)
    return ScoreModel(info["net"], sde, "score", True, info["centered"], tuple(info["shape"]),
                      score_override=score_fn), info


# --- sampling on a scheduler's timesteps ---------------------------------------------------------------


def diffusers_times(info: Mapping[str, Any], num_inference_steps: int) -> torch.Tensor:
    """The times (float64, decreasing) at which the diffusers scheduler of a VP model from
    :func:`load_diffusers` evaluates the network in ``num_inference_steps`` steps: its ``set_timesteps``
    (spacing as its config says) mapped by ``info["t_of_timestep"]``. Pass them as ``times=`` to a
    fixed-step solver of :mod:`sdegen.solvers`: ``ddim(..., times=diffusers_times(info, K))`` takes the
    steps of diffusers' DDIM (``eta = 0``), its last step into ``sigma = 0`` being the scheduler's final
    ``alpha_bar = 1`` (``set_alpha_to_one=True``, the default), from the same ``x_T``.

    Raises ValueError for a model without DDPM timesteps (``ScoreSdeVeScheduler``: continuous sigmas) or a
    scheduler class diffusers does not have; ImportError without diffusers."""
    if "t_of_timestep" not in info:
        raise ValueError(f"{info.get('scheduler', 'this scheduler')} has no DDPM timesteps; diffusers_times applies "
                         "to DDPM-family (VP) models")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    cls = getattr(_diffusers(), str(info["scheduler"]), None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"diffusers has no scheduler class {info['scheduler']!r}")
    scheduler = cls.from_config(dict(info["scheduler_config"]))
    scheduler.set_timesteps(num_inference_steps)
    return info["t_of_timestep"](scheduler.timesteps.to(torch.float64))


# --- sdegen runs out ----------------------------------------------------------------------------------

# Why no network of sdegen maps exactly onto diffusers' UNet2DModel (checked block by block).
DIFFUSERS_EXPORT_REFUSAL = (
    "no sdegen network maps exactly onto diffusers' UNet2DModel: NCSN++/DDPM++ (all presets) apply the up "
    "path's self-attention once per resolution after its num_res_blocks + 1 residual blocks (score_sde's "
    "layout), while UNet2DModel's AttnUpBlock2D attends after every block; its once-per-level blocks "
    "(AttnSkipUpBlock2D) exist only with the FIR output/input skip pyramids (progressive=output_skip, "
    "progressive_input=input_skip), which no preset uses, and the small presets' GroupNorm groups "
    "(min(C/4, 32)) differ from UNet2DModel's fixed norm_num_groups; use --format safetensors")


def export_safetensors(model, out: str | os.PathLike, *, source: str = "") -> Path:
    """Write a trained model (:class:`sdegen.train.ScoreModel` with its config; the weights it holds, e.g.
    EMA) to the folder ``out``: ``model.safetensors`` and ``sdegen_config.json`` (format, run config, step,
    source). :func:`load_export` reads it back. Files are written atomically."""
    from safetensors.torch import save

    from .train.config import to_dict

    if model.config is None:
        raise ValueError("only a model with its training config can be exported (a run or a training checkpoint)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
    meta = {"format": EXPORT_FORMAT, "version": 1, "step": model.step, "source": source,
            "config": to_dict(model.config)}
    weights = save(state, metadata={"format": EXPORT_FORMAT})
    atomic_write(out / EXPORT_WEIGHTS, lambda f: f.write(weights))
    atomic_write(out / EXPORT_CONFIG, lambda f: f.write((json.dumps(meta, indent=2) + "\n").encode()))
    return out


def is_export(path: str | os.PathLike) -> bool:
    """``path`` is a folder written by :func:`export_safetensors` (or its config file)."""
    p = Path(path)
    return (p / EXPORT_CONFIG).is_file() or (p.name == EXPORT_CONFIG and p.is_file())


def load_export(path: str | os.PathLike, *, device="cpu"):
    """The :class:`sdegen.train.ScoreModel` of a folder written by :func:`export_safetensors`, in eval mode."""
    from safetensors.torch import load_file

    from .train.config import ConfigError, from_dict
    from .train.runs import build

    folder = Path(path)
    folder = folder.parent if folder.name == EXPORT_CONFIG else folder
    meta = _read_json(folder / EXPORT_CONFIG)
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{folder / EXPORT_CONFIG}: not an sdegen export (format {meta.get('format')!r})")
    try:
        model = build(from_dict(meta["config"]))
    except (ConfigError, KeyError, TypeError) as e:
        raise ValueError(f"{folder / EXPORT_CONFIG}: its config does not load: {e}") from None
    weights = folder / EXPORT_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no {EXPORT_WEIGHTS} in {folder}")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from None
    expected = model.net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected or any(state[k].shape != v.shape for k, v in expected.items()):
        raise ValueError(f"{weights} does not match its config (missing: {_few(missing) or 'none'}; "
                         f"unexpected: {_few(unexpected) or 'none'})")
    model.net.load_state_dict(state, strict=True)
    model.net.to(device).eval().requires_grad_(False)
    model.step = meta.get("step")
    return model
