"""Online stage: consume behaviour events from Kafka and keep each user's real-time features."""
