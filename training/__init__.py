"""The NFNet training program (TensorFlow): `python -m training.train`."""
