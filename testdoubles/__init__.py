"""Test doubles: stand-ins for what cannot run here, shared by the tests and the benchmarks.

Not part of the gateway. `standin` speaks TF Serving's gRPC APIs over our SavedModel (it is
NOT TF Serving); `echo_server` is a look-alike gateway for the load tester. Each says what it
copies from the real thing and what it leaves out.
"""
