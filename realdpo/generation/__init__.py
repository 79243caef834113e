"""Generation with the model's own pipeline: the 'lose' videos (as latents, cached) and user-facing sampling."""
