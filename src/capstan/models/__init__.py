"""Model flavors: saving, describing and loading models."""
