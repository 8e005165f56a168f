"""mnist-precision: single or half precision for deep learning, measured on MNIST."""
