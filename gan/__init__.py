"""Pure PyTorch DCGAN: models, losses, Algorithm 1, FID, the memorization audit, latent tools.

Nothing here imports Ray or MLflow; every piece runs in a plain Python process.
"""
