"""Online stage: the FastAPI gateway — recommendations from Triton, events into Kafka."""
