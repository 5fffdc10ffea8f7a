"""The directory: connectors, routes and contacts (SPEC §1, §3.6; R-C*, R-R*).

``ops`` is the one write door; ``rules`` and ``routing`` are pure; ``snapshot`` and
``addresses`` are what intake and the pipeline read; ``file`` and ``transfer`` are
``mailgate directory export|import``. (A connector's R-C3 test, which talks to mail
servers, is ``gateway.probe``: the directory itself never opens a connection.)
"""
