from . import lorax as lorax
from ._luksforge import *
from ._luksforge import __version__ as __version__

__all__: list[str]
