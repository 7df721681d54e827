"""Build hook for the optional native field scanner (everything else is in pyproject.toml).

``ckprof.trace._scan`` is a small C extension (no dependencies beyond CPython) that the
fast trace reader uses when it is importable; without a C compiler the build skips it
(``optional=True``) and ckprof reads traces with its pure-Python (msgspec) path, with
the same results. ``CKPROF_NATIVE=0`` turns the extension off at run time.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ckprof.trace._scan", ["ckprof/trace/_scan.c"], optional=True,
                             extra_compile_args=["-O2"])])
