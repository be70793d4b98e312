"""Training-loop integrations. Each module imports its framework, so import only the one you use:

    from repscope.integrations.lightning import RepscopeCallback          # PyTorch Lightning
    from repscope.integrations.huggingface import RepscopeTrainerCallback # Hugging Face Trainer
"""

from repscope.integrations.probe import ProbeSetLogger

__all__ = ["ProbeSetLogger"]
