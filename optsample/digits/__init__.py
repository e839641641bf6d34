"""The embedded default: a small class-conditional diffusion model of scikit-learn digits (being written)."""
