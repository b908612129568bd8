"""Build the `_fastser` Cython extensions.

Switches (environment variables, read at build time):
  ACTORS_ANNOTATE=1   write Cython's HTML annotation next to each .pyx (finds Python calls in hot loops)
  ACTORS_DEBUG=1      line tracing and asserts, for coverage and profilers; slower
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

debug = os.environ.get("ACTORS_DEBUG") == "1"
annotate = os.environ.get("ACTORS_ANNOTATE") == "1"

macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
directives = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "embedsignature": True,
}
if debug:
    macros.append(("CYTHON_TRACE_NOGIL", "1"))
    directives.update(linetrace=True, boundscheck=True, wraparound=True)

extensions = [
    Extension(
        name,
        [path],
        include_dirs=[numpy.get_include(), "_fastser/includes"],
        define_macros=macros,
        libraries=libraries,
        extra_compile_args=["-O0", "-g"] if debug else ["-O3"],
    )
    for name, path, libraries in [
        ("_fastser._codec", "_fastser/_codec.pyx", []),
        ("_fastser._shm", "_fastser/_shm.pyx", ["z"]),        # zlib's crc32 for the journal
    ]
]

setup(ext_modules=cythonize(extensions, compiler_directives=directives, annotate=annotate))
