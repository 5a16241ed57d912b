"""Run folders: the typed row schema, the folder store and the writer's lock."""
