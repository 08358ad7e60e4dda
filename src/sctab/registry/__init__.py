"""The MLflow model registry side of the platform: register, promote, import published checkpoints.

    register_pipeline_models("models", store=..., ontology_path=..., metrics=..., params=...)  # the stage
    promote("sctab-ensemble")              # @challenger -> @champion if its test F1 is at least as good
    import_checkpoints([...], var_path=..., cell_types_path=..., name="sctab-ensemble", ...)
"""

from sctab.registry.promote import Promotion, promote
from sctab.registry.register import (
                                     CHALLENGER,
                                     CHAMPION,
                                     DEFAULT_NAMES,
                                     RegisteredVersion,
                                     RegistryError,
                                     register_folder,
                                     register_pipeline_models,
)

__all__ = ["CHALLENGER", "CHAMPION", "DEFAULT_NAMES", "Promotion", "RegisteredVersion", "RegistryError",
           "promote", "register_folder", "register_pipeline_models"]
