"""What every rendered answer (HTTP bodies, webhook payloads) links to and names."""

from __future__ import annotations

from dataclasses import dataclass

from server.outputs.base import OutputStorage
from server.predictions.model import Prediction
from server.predictions.models import ModelRegistry


@dataclass(frozen=True)
class RenderContext:
    """The API's public base URL, where the output files are fetched from (the output storage
    makes their URLs: the API's own /v1/outputs, or an object store), and the models' names."""

    base_url: str
    outputs: OutputStorage
    models: ModelRegistry

    def output_urls(self, pred: Prediction) -> list[str]:
        """The URLs of the prediction's files, in order; none once retention removed them."""
        if pred.data_removed:
            return []
        return [self.outputs.url_for(pred.id, name, self.base_url) for name in pred.output]
