"""locproxy benchmarks: ``bench/run`` measures locproxy side by side with peers
(nginx, direct backend fetches, Glance's own ``/file``) in the same run.

See ``bench/README.md``. Not part of the installed package.
"""
