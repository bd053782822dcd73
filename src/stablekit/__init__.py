"""stablekit: Stable Diffusion in one offline toolkit."""
