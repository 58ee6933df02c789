"""The OpenAI Images API: the same predictions, in OpenAI's request and answer shapes."""
