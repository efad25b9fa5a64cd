"""Generic utilities shared by the project and by network pickles (docs/compatibility.md, "Foundation").

`dnnlib.util` is imported here so that code doing only `import dnnlib` can call `dnnlib.util.open_url(...)`.
"""

from . import util
from .util import EasyDict, make_cache_dir_path

__all__ = ["EasyDict", "make_cache_dir_path", "util"]
