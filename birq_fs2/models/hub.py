"""Typed access to the ``birq`` family, as fairseq2 offers it for its own families
(``get_wav2vec2_model_hub``): ``get_birq_model_hub().load_model("card")``,
``.get_archs()``, ``.create_new_model(config)``."""

from __future__ import annotations

from fairseq2.models import ModelHubAccessor

from .config import BIRQ_FAMILY, BirqConfig
from .model import BirqModel

get_birq_model_hub = ModelHubAccessor(BIRQ_FAMILY, BirqModel, BirqConfig)
