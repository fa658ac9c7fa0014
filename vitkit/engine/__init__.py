"""Training, evaluation and prediction over the models and data of this package."""
from ..compat import require_torch

require_torch()

