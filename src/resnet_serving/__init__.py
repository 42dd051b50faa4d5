"""resnet-serving: build, export, serve and load-test Keras ResNets."""

__version__ = "0.1.0"
