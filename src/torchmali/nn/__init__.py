"""Neural-ODE models built on :func:`torchmali.solve`.

- :class:`ODEBlock`: an ``nn.Module`` that integrates its input and keeps the last solve's stats.
- :class:`ConvODEFunc`, :class:`MLPODEFunc`: ready, time-conditioned vector fields.
- :class:`ODEResNet`: ResNet-style image classifier with ODE blocks (8x8 and ResNet18 presets).
- :class:`LatentODE`: latent ODE for irregularly sampled time series (Rubanova et al., 2019).
- :class:`CNF`: FFJORD continuous normalizing flow with RNODE regularisers.
"""

from torchmali.nn._block import ODEBlock
from torchmali.nn._cnf import CNF, CNFDynamics, CNFOutput
from torchmali.nn._fields import ConvODEFunc, MLPODEFunc
from torchmali.nn._latent import LatentODE, LatentODEOutput
from torchmali.nn._resnet import BasicBlock, ODEResNet

__all__ = [
    "CNF",
    "BasicBlock",
    "CNFDynamics",
    "CNFOutput",
    "ConvODEFunc",
    "LatentODE",
    "LatentODEOutput",
    "MLPODEFunc",
    "ODEBlock",
    "ODEResNet",
]
