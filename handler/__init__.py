"""Event-driven side: events, storage, the one processing function, and the Lambda, Knative and CLI entries."""
