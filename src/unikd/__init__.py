"""unikd: unified knowledge distillation for transformer language models."""

from unikd.errors import ConfigError

__version__ = "0.1.0"
__all__ = ["ConfigError", "__version__"]
