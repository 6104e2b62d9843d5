"""sdegen: generative modeling with stochastic differential equations.

Score-based models (Song et al. 2021): SDEs, samplers, likelihoods; GANs as energy-based models (Che et
al. 2020, DDLS); evaluation (FID and friends); controllable generation (guidance, inpainting, colorization).
"""
from .sde import SDE, SubVPSDE, VESDE, VPSDE, get_sde
from .toy import GaussianMixture, get_toy
from .langevin import langevin, langevin_step
from .score import NULL_LABEL, CountingScore, classifier_free_score, guided_score, score_fn_from_model
from .sampling import CORRECTORS, PREDICTORS, SAMPLERS, generate, sample, sample_ode, sampler_defaults
from .solvers import SOLVERS, solve
from .conditional import colorize, inpaint
from .likelihood import bits_per_dim, log_likelihood
from .losses import dsm_loss, ddpm_loss, edm_loss, get_loss, smld_loss
from .nets import PRESETS, build_network, load_score_sde_checkpoint
from .data import get_dataset
from .interop import load_diffusers

__version__ = "0.1.0"

__all__ = [
    "SDE", "VESDE", "VPSDE", "SubVPSDE", "get_sde", "GaussianMixture", "get_toy", "langevin", "langevin_step",
    "CountingScore", "score_fn_from_model", "guided_score", "classifier_free_score", "NULL_LABEL",
    "PREDICTORS", "CORRECTORS", "SAMPLERS", "generate", "sampler_defaults",
    "sample", "sample_ode", "SOLVERS", "solve", "inpaint", "colorize",
    "log_likelihood", "bits_per_dim", "dsm_loss", "smld_loss", "ddpm_loss", "edm_loss", "get_loss", "PRESETS",
    "build_network", "load_score_sde_checkpoint", "get_dataset", "load_diffusers",
]
