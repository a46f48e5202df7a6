"""Support code for the test suite and the CPU demo: the tiny offline model, instrument servers.

Import the modules themselves (``pytest_llmslo.testing.tiny_model``): each also runs with
``python -m``, which warns when the package has already imported it.
"""
