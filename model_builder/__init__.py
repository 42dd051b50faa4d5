"""model_builder: the ResNet family, training, and XLA SavedModel export for TF Serving."""
