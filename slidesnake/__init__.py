"""slidesnake: the library behind the Snakemake pathology pipeline.

Rules call thin scripts in ``workflow/scripts`` and the ``slidesnake`` CLI; both
are adapters over the functions in this package.
"""

__version__ = "0.1.0"
