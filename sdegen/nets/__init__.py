"""Score networks: a small MLP for low-dimensional data and the NCSN++ / DDPM++ U-Nets of Song et al. 2021.

Every network is called as ``net(x, labels)``. A network is described by a dict of model options (the
official score_sde names, plus ``name``, ``image_size``, ``num_channels``); :data:`PRESETS` names a few.
Besides the network's own options a preset records how a score function should call it:
``conditioning`` (see :data:`CONDITIONINGS`) and ``parametrization`` (``"score"``: the output is the
score; ``"eps"``: the output is the noise, ``score = -output / std(t)``).
"""
from .build import CLASSIFIERS, CONDITIONINGS, NETWORKS, PRESETS, build_network, model_options
from .classifier import EncoderClassifier, MLPClassifier
from .layers import NULL_LABEL
from .mlp import MLPScoreNet
from .modes import eval_mode
from .ncsnpp import NCSNpp
from .score_sde import load_score_sde_checkpoint

__all__ = ["NETWORKS", "PRESETS", "CONDITIONINGS", "build_network", "model_options",
           "load_score_sde_checkpoint", "MLPScoreNet", "NCSNpp", "CLASSIFIERS", "EncoderClassifier",
           "MLPClassifier", "NULL_LABEL", "eval_mode"]
