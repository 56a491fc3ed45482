"""The OpenAI Batch API (`/v1/files`, `/v1/batches`): durable jobs run on idle capacity."""
