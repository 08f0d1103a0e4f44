"""Model providers: the request/response values, the simulated provider and HTTP clients."""
