"""The local EGI-like sandbox (`prefect_egi.sandbox`): real peers on 127.0.0.1.

Used by `egi-flows demo`, `egi-flows sandbox` and the tests: our Check-in OIDC provider,
a PyWPS DataMiner, a DiracX server with a local DIRAC site that really runs the jobs, Keystone/Nova stand-ins for FedCloud
sites, JupyterHub behind an EGI-like token front, and a fault proxy. Each peer is a module
run as its own process (`peers.start_peer`); `stack.Sandbox` starts them all. Production
code never imports this package.
"""
