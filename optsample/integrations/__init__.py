"""optsample inside other tools: diffusers (diffusers/) and k-diffusion's sampler convention. Imports the library only."""
