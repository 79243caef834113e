"""Data: curated shard samples turned into model-ready clips, the on-disk latent cache, and the training stream."""
