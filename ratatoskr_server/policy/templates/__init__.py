"""Chat templates: the engine, where a model's template comes from, and the render the gateway offers."""
