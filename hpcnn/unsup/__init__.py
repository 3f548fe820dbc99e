"""Unsupervised feature learning on hpcnn kernels: the UFLDL sparse autoencoder and FISTA
sparse coding with dictionary learning (``python -m hpcnn.unsup autoencoder|fista``)."""
