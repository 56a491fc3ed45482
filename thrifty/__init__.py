"""Thrifty: cut LLM serving cost by stacking routing, caching, balancing and autoscaling."""

__version__ = "0.1.0"
