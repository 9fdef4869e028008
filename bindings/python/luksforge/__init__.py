"""luksforge: NBDE-ready LUKS2 images — unique volume keys and Clevis (tang, sss) bindings.

Everything lives in the compiled extension ``luksforge._luksforge``; this package re-exports it so that
``import luksforge`` is all a build script needs. Secrets are accepted as bytes-like objects (bytes,
bytearray, memoryview, luksforge.Secret) and returned as wiping ``luksforge.Secret`` objects.
"""

from . import _luksforge
from ._luksforge import *  # noqa: F401,F403  (the public API is the extension's)
from . import lorax  # noqa: F401  (helpers for the Lorax templates: luksforge.lorax)

__all__ = [name for name in dir(_luksforge) if not name.startswith("_")]
__version__ = getattr(_luksforge, "__version__", "0")
