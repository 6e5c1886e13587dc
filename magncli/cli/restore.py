"""`magn restore` (placeholder until the inference engine lands)."""
