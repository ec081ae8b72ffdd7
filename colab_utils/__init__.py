"""colab_utils: the helper package of the visual anomaly detection notebook suite.

Train on defect-free images, flag defective parts and show where the defect is.
See ARCHITECTURE.md for the layers and contracts.
"""

from .config import Config, ConfigError

__all__ = ["Config", "ConfigError"]
__version__ = "0.1.0"
