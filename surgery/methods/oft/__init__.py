"""OFT, orthogonal finetuning (Qiu et al. 2023; PEFT 0.21.2's form), for Linear, Conv2d and Embedding.

    y = W (BD x) + b           BD = blockdiag(R_1..R_r): r blocks of b x b, r x b = in_features
    R_j = Cayley(Q_j),         Q_j = U_j - U_j^T skew-symmetric, U_j's strict upper triangle = oft_R.weight[j]
      exact:       R = (I - Q)(I + Q)^-1
      Neumann:     R = I + 2Q + 2Q^2 + ... + 2Q^(T-2) + Q^(T-1)   (T = num_cayley_neumann_terms, PEFT's series)
    COFT:          ||Q_j||_F <= eps / sqrt(r)  (parameters projected in place before each use)
    block_share:   R_1 = ... = R_r (one packed block)
    merge:         W <- W BD^T  (Embedding, which rotates its output rows: E <- E BD)

    config.py    OFTConfig             layout.py    r / oft_block_size per layer (refusals name valid sizes)
    cayley.py    packed -> rotation    blockwise.py block-diagonal products without a dense matrix
    rotation.py  OFTRotation (oft_R)   layer.py     OFTLayer: adapters, merge, unmerge
    linear.py / conv.py / embedding.py the layer types   spec.py  the registry entry   model.py  OFTModel
"""
from .config import OFTConfig
from .model import OFTModel
from .spec import SPEC

__all__ = ["OFTConfig", "OFTModel"]
