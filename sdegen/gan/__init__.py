"""The GAN wing: GANs trained on toy data or images, and sampled as energy-based models (DDLS).

- :mod:`.config`: :class:`GANConfig`, the options of a run (a schema), :func:`load_config`;
- :mod:`.train`: the non-saturating GAN losses and :func:`train_gan` (run folders with checkpoints,
  lock and resume from :mod:`sdegen.checkpoint` / :mod:`sdegen.locking`, as score models);
- :mod:`.io`: self-describing net files (:func:`save_net`, :func:`load_net`) and the pretrained DCGAN
  of csinva (:func:`load_csinva_dcgan`);
- :mod:`.ddls`: the latent energy, Discriminator Driven Latent Sampling (Che et al. 2020) on the one
  Langevin engine, and calibration of a discriminator's logit.
The networks themselves live in :mod:`sdegen.nets` (``dcgan``, ``gan_mlp``); ``sdegen ddls`` writes its
samples through the one sampling job, :mod:`sdegen.train.sample_job`.
"""
from .config import IMAGE_SETS, RESUMABLE_CHANGES, GANConfig, load_config
from .ddls import (Calibration, CalibratedLogit, DDLSResult, StandardNormal, calibrate_logit, ddls,
                   latent_energy)
from .io import GAN_NETS, load_csinva_dcgan, load_net, net_record, save_net
from .train import GANRun, build_nets, d_loss, g_loss, make_data, train_gan

__all__ = ["IMAGE_SETS", "RESUMABLE_CHANGES", "GANConfig", "load_config", "Calibration", "CalibratedLogit",
           "DDLSResult", "StandardNormal", "calibrate_logit", "ddls", "latent_energy", "GAN_NETS",
           "load_csinva_dcgan", "load_net", "net_record", "save_net", "GANRun", "build_nets", "d_loss", "g_loss",
           "make_data", "train_gan"]
