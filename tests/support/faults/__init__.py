"""The fault table and its lab (see ``lab`` and ``table``); the rows are in
``backend_rows``, ``upstream_rows`` and ``operation_rows``."""
