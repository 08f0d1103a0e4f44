"""Column generators: samplers, expressions, LLM columns, embeddings and custom Python."""
