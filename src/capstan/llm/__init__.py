"""Language models: OpenAI-compatible chat, completions and embeddings over a generation engine with continuous
batching (transformers on CPU or GPU, vLLM on GPU), LoRA adapters served as model versions, and fine-tuning as a
training job.

The joints are in `capstan.llm.ports`: the typed requests an OpenAI route turns into, the events an engine streams
back, and the `GenerationEngine`, `Tokenizer` and `Embedder` ports every backend implements.
"""
