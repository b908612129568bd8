"""Sphinx configuration of the API reference: autodoc reads the docstrings of the public `actors` namespace.

Build it with warnings as errors, from anywhere, once the package is installed with its docs extra
(`pip install -e ".[docs]"`): `python -m sphinx -W --keep-going -b html docs/api OUTPUT_DIR` (.ci/run does).
"""
import actors

project = "actors"
release = version = actors.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]

# The public names live in private modules (actors._store, ...) and are re-exported by `actors`: document them
# under the names users import, in the order of the source.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
add_module_names = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
