"""Adapters to other OOD toolkits. Each is imported on its own, so featurenorm never imports them itself."""
