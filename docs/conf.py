"""
Sphinx configuration for metagateway's documentation.
"""

project = "metagateway"
author = "the metagateway authors"
copyright = "2026, the metagateway authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "repoze.sphinx.autointerface",
]

intersphinx_mapping = {}
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
