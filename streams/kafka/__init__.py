"""Kafka plumbing shared by every stage: consumer and producer set-up, topic creation,
reading a topic to its end, the embedded broker, the schema registry client, record
headers, and the dead-letter sender."""
