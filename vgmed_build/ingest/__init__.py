"""The ingest stage: source datasets -> rendered slices + one region per (image, structure) in the catalog.

``render`` turns one loaded source item into PNGs and records; ``run`` is the driver (listing,
fingerprints, the worker pool, withdrawal); ``cli`` holds ``vgmed-build ingest | regions | stats``.
The catalog queries are ``Catalog`` methods (:mod:`vgmed_build.catalog.ingest`).
"""
