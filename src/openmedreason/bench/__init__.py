"""OpenMedReason-Bench: item schema, loaders, answer extraction, PKR rubric and score math."""
