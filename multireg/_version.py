"""multireg's version, the one place it is written: the package's ``__version__``, the run
reports (:mod:`multireg.workflow.report`) and the distribution's metadata (``pyproject.toml``
reads it as ``attr: multireg._version.__version__``) all take it from here."""

__version__ = "0.1.0"
