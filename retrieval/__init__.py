"""Batch generative retrieval: item embeddings, semantic IDs, training, metrics and the batch job."""
