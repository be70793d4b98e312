"""The embedding projector: a seeded sample of at most 20 000 rows drawn in 2-D (exact PCA always, UMAP when
umap-learn is installed), with the per-row data the page colours by (labels, split, poison flags, k-NN density)."""

from .density import knn_density
from .pca import Pca2d, pca_2d
from .protocol import project
from .umap2d import umap_2d, umap_available

__all__ = ["Pca2d", "knn_density", "pca_2d", "project", "umap_2d", "umap_available"]
