"""repscope: measure how good a learned representation is, while it trains.

    import repscope
    run = repscope.Client("http://127.0.0.1:8000").run(project="simclr", name="lr0.3")
    run.log_embeddings(step=1000, embeddings=Z, labels=y, dataset="val")
    run.wait()
"""

__version__ = "0.1.0"

from repscope.client import Client, EvaluationFailed, RepscopeError, RunConfigConflict, RunHandle  # noqa: E402

__all__ = ["Client", "RunHandle", "RepscopeError", "EvaluationFailed", "RunConfigConflict", "__version__"]
