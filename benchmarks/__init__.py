"""`make bench`: the optimiser against the official implementation, and the service under load."""
