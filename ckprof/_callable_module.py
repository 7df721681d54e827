"""One mechanism for ckprof's public names that are also submodules.

# NOTE [ Callable module ]
# ``ckprof.capture``, ``ckprof.compare`` and ``ckprof.sweep`` are public functions,
# resolved lazily by ckprof/__init__.py, that live in a (sub)module of the same name.
# Importing that submodule -- ``from ckprof.compare import ...``, or any import of
# ``ckprof.capture.session`` -- makes the import system set the package attribute to
# the MODULE, shadowing the function. So each such module is made callable and
# forwards to its function: ``ckprof.compare(a, b)`` works whichever happened first.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def make_module_callable(module_name: str, function_name: str) -> None:
    """Make ``sys.modules[module_name](...)`` call its attribute ``function_name``."""
    module = sys.modules[module_name]

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return getattr(self, function_name)(*args, **kwargs)

    _CallableModule.__name__ = f"CallableModule[{module_name}]"
    module.__class__ = _CallableModule
