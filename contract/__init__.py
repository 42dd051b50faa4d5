"""The contract every room of resnet-serving shares: the bottom of the import graph.

What an export promises and what every client of it relies on, free of TensorFlow and of
every other package of ours: the manifest (`contract.manifest`), signature and tensor names
(`contract.signatures`), TF Serving's wire messages and config files built from its own
schemas (`contract.tfs_protos`, `contract.wire`, `contract.tfs_config`), the root error
(`contract.errors`) and the version below.
"""

__version__ = "0.1.0"
