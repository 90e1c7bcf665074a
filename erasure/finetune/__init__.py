"""Fine-tune erasure (ESD-style) with CARE retain and contextual losses, producing the closed form's Delta.

* :mod:`.losses`    -- eqs. (1)-(3): erase (ESD), CARE retain, contextual CARE;
* :mod:`.adapters`  -- LoRA adapters as forward hooks (eq. 4), parameter sets, gradient checkpointing;
* :mod:`.denoiser`  -- the Denoiser protocol (eq. 5) and the pools of noisy latents it trains on;
* :mod:`.trainer`   -- :func:`finetune`: settings -> :class:`FinetuneResult` (Delta + loss history + stats);
* :mod:`.toy`       -- the toy world's model as a Denoiser.
"""

from .adapters import PARAMETER_SETS, AdapterError, LoraAdapters, select_linear
from .denoiser import Denoiser
from .trainer import FinetuneError, FinetuneResult, FinetuneSettings, finetune

__all__ = [
    "PARAMETER_SETS", "AdapterError", "Denoiser", "FinetuneError", "FinetuneResult", "FinetuneSettings",
    "LoraAdapters", "finetune", "select_linear",
]
